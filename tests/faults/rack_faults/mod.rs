//! Rack faults through a real Mosquitto (issue 9, point 8): the real `coolantd run` binary as
//! the controller of a simulated CDU, real `coolantd agent` processes on simulated GPUs, and
//! each fault's reaction counted in ticks (the controller's `/status` tick, or an agent's
//! readings `seq`). Emulated wire clients stand in for an agent only where a real one cannot
//! produce the fault (a clock 10 minutes off), or to replay an old lease as a client's queue
//! would.
//!
//! Every test uses 200 ms periods and `[rack] stale_after_ms = 600`, `ack_timeout_ms = 300`,
//! `lease_ms = 2000`, `conflict_clear_after_ms = 1000`. A leak (the CDU's leak input, rewritten
//! by a Modbus proxy between the controller and its simulated CDU) makes the controller cap
//! every remote GPU to its minimum, which is how a test gets leases onto real agents. The
//! bounds are generous for a loaded 2-core machine, in ticks of the process that reacts, so a
//! slow machine slows the clock they are counted in too; each reaction is printed with its
//! bound.

mod leases;
mod network;
mod rig;
