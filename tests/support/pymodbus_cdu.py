"""An independent Modbus TCP CDU for coolantd's tests, served by pymodbus 3.0.

Usage: /usr/bin/python3 pymodbus_cdu.py PORT MAP.json

MAP.json is a list of entries:
  {"kind": "input"|"holding", "address": N, "type": "INT16"|..., "order": "ABCD"|..., "raw": X}
  {"kind": "coil"|"discrete", "address": N, "value": true|false}

Words are computed here with Python's struct module and the byte/word order definitions
(ABCD big-endian, DCBA little-endian, BADC bytes swapped in each word, CDAB words reversed),
independently of coolantd's Rust encoder. Only listed addresses exist (sparse blocks), so a
read of any other address answers exception 0x02 (illegal data address).
"""

import json
import logging
import struct
import sys

from pymodbus.datastore import (
    ModbusServerContext,
    ModbusSlaveContext,
    ModbusSparseDataBlock,
)
from pymodbus.server import StartTcpServer

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


def main() -> None:
    port = int(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
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
    slave = ModbusSlaveContext(
        co=block(tables["coil"]),
        di=block(tables["discrete"]),
        ir=block(tables["input"]),
        hr=block(tables["holding"]),
        zero_mode=True,
    )
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    StartTcpServer(
        context=ModbusServerContext(slaves=slave, single=True),
        address=("127.0.0.1", port),
        allow_reuse_address=True,
    )


if __name__ == "__main__":
    main()
