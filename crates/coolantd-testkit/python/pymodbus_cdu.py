"""An independent Modbus TCP or RTU CDU for coolantd's tests, served by pymodbus 3.0.

Usage: /usr/bin/python3 pymodbus_cdu.py PORT MAP.json
       /usr/bin/python3 pymodbus_cdu.py --rtu DEVICE [--baud 19200] [--parity E]
                                        [--stopbits 1] [--unit 1] MAP.json

The RTU mode (pyserial and pyserial-asyncio: Debian `python3-serial`,
`python3-serial-asyncio`) serves the same map on a serial device as the slave `--unit`
only: like a real RS-485 slave it stays silent for requests to any other unit id.

MAP.json is a list of entries:
  {"kind": "input"|"holding", "address": N, "type": "INT16"|..., "order": "ABCD"|..., "raw": X}
  {"kind": "coil"|"discrete", "address": N, "value": true|false}

Words are computed here with Python's struct module and the byte/word order definitions
(ABCD big-endian, DCBA little-endian, BADC bytes swapped in each word, CDAB words reversed),
independently of coolantd's Rust encoder. Only listed addresses exist (sparse blocks), so a
read of any other address answers exception 0x02 (illegal data address).
"""

import argparse
import json
import logging
import struct
import sys

from pymodbus.datastore import (
    ModbusServerContext,
    ModbusSlaveContext,
    ModbusSparseDataBlock,
)
from pymodbus.transaction import ModbusRtuFramer
from pymodbus.server import StartSerialServer, StartTcpServer

FORMATS = {
    "INT16": ">h",
    "UINT16": ">H",
    "INT32": ">i",
    "UINT32": ">I",
    "FLOAT32": ">f",
    "FLOAT64": ">d",
}


def ordered(big_endian: bytes, order: str) -> bytes:
    """Rearranges big-endian bytes into the wire layout of `order`."""
    if order == "ABCD":
        return big_endian
    if order == "DCBA":
        return big_endian[::-1]
    pairs = [big_endian[i : i + 2] for i in range(0, len(big_endian), 2)]
    if order == "BADC":
        return b"".join(p[::-1] for p in pairs)
    if order == "CDAB":
        return b"".join(pairs[::-1])
    raise ValueError(f"unknown order {order}")


def words(entry) -> list:
    raw = entry["raw"]
    fmt = FORMATS[entry["type"]]
    if fmt[1] in "hHiI":
        raw = int(raw)
    data = ordered(struct.pack(fmt, raw), entry["order"])
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--rtu", metavar="DEVICE")
    p.add_argument("--baud", type=int, default=19200)
    p.add_argument("--parity", choices="NEO", default="E")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    p.add_argument("--unit", type=int, default=1)
    p.add_argument("args", nargs="+", help="[PORT] MAP.json")
    a = p.parse_args()
    if a.rtu is None and len(a.args) != 2 or a.rtu is not None and len(a.args) != 1:
        p.error("expected PORT MAP.json, or --rtu DEVICE MAP.json")
    return a


def main() -> None:
    a = parse_args()
    with open(a.args[-1], encoding="utf-8") as f:
        entries = json.load(f)
    tables = {"coil": {}, "discrete": {}, "input": {}, "holding": {}}
    for e in entries:
        table = tables[e["kind"]]
        if e["kind"] in ("coil", "discrete"):
            table[e["address"]] = bool(e["value"])
        else:
            for i, w in enumerate(words(e)):
                table[e["address"] + i] = w
    # Sparse blocks need at least one entry; address 60000 is far from any test register.
    block = lambda t: ModbusSparseDataBlock(t or {60000: 0})
    # zero_mode: register N of the map is PDU address N, as coolantd's profiles count.
    slave = ModbusSlaveContext(
        co=block(tables["coil"]),
        di=block(tables["discrete"]),
        ir=block(tables["input"]),
        hr=block(tables["holding"]),
        zero_mode=True,
    )
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if a.rtu is None:
        StartTcpServer(
            context=ModbusServerContext(slaves=slave, single=True),
            address=("127.0.0.1", int(a.args[0])),
            allow_reuse_address=True,
        )
    else:
        # single=False: the RTU framer then drops frames for other unit ids unanswered.
        StartSerialServer(
            context=ModbusServerContext(slaves={a.unit: slave}, single=False),
            framer=ModbusRtuFramer,
            port=a.rtu,
            baudrate=a.baud,
            bytesize=8,
            parity=a.parity,
            stopbits=a.stopbits,
            ignore_missing_slaves=True,
        )


if __name__ == "__main__":
    main()
