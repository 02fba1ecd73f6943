//! Modbus TCP/RTU collector for CDUs, decoded through firmware profiles.
