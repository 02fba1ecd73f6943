//! The simulated CDU's Modbus TCP server: a real server (tokio-modbus `tcp-server`) that
//! serves a [`CduState`] through a firmware profile, so the collector, mbpoll or any SCADA
//! tool talks to the simulator exactly as it would to a CDU.
//!
//! Reads encode the state's current role values into the registers the profile maps; an
//! address the profile does not map answers IllegalDataAddress, like most CDU controllers.
//! Writes must cover whole writable registers; they are decoded and handed to
//! [`CduState::write`]. A refused or out-of-limits write answers IllegalDataValue, a write to
//! a read-only or unmapped address IllegalDataAddress.

use super::CduState;
use crate::collect::modbus::decode::{decode_bit, decode_words, encode, Encoded};
use crate::profile::cdu::{CduProfile, Register, RegisterKind};
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// One connection's view of the simulated CDU.
struct CduService {
    /// The Modbus unit id this CDU answers to; requests for any other id are refused.
    unit_id: u8,
    profile: Arc<CduProfile>,
    state: Arc<Mutex<dyn CduState>>,
}

impl tokio_modbus::server::Service for CduService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        // A wrong unit id in a site's configuration must show up in a rehearsal: answer it
        // the way a Modbus TCP gateway answers for a unit that is not there (exception 0x0B,
        // Gateway Target Device Failed to Respond), instead of serving any id.
        if req.slave != self.unit_id {
            tracing::debug!(
                asked = req.slave,
                unit_id = self.unit_id,
                "simulated CDU: request for another unit id refused"
            );
            return ready(Err(ExceptionCode::GatewayTargetDevice));
        }
        ready(self.handle(req.request))
    }
}

impl CduService {
    fn handle(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        match req {
            Request::ReadCoils(a, n) => self
                .read_bits(RegisterKind::Coil, a, n)
                .map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => self
                .read_bits(RegisterKind::Discrete, a, n)
                .map(Response::ReadDiscreteInputs),
            Request::ReadInputRegisters(a, n) => self
                .read_words(RegisterKind::Input, a, n)
                .map(Response::ReadInputRegisters),
            Request::ReadHoldingRegisters(a, n) => self
                .read_words(RegisterKind::Holding, a, n)
                .map(Response::ReadHoldingRegisters),
            Request::WriteSingleRegister(a, w) => self
                .write_words(a, &[w])
                .map(|()| Response::WriteSingleRegister(a, w)),
            Request::WriteMultipleRegisters(a, ws) => {
                let n = u16::try_from(ws.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
                self.write_words(a, &ws)
                    .map(|()| Response::WriteMultipleRegisters(a, n))
            }
            Request::WriteSingleCoil(a, b) => self
                .write_bits(a, &[b])
                .map(|()| Response::WriteSingleCoil(a, b)),
            Request::WriteMultipleCoils(a, bs) => {
                let n = u16::try_from(bs.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
                self.write_bits(a, &bs)
                    .map(|()| Response::WriteMultipleCoils(a, n))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    /// Registers of `kind` that intersect `[start, start + count)`.
    fn intersecting(
        &self,
        kind: RegisterKind,
        start: u16,
        count: u16,
    ) -> impl Iterator<Item = &Register> {
        let lo = u32::from(start);
        let hi = lo + u32::from(count);
        self.profile
            .registers
            .iter()
            .filter(move |r| r.kind == kind && u32::from(r.address) < hi && r.last_address() >= lo)
    }

    fn current(&self, reg: &Register) -> Result<f64, ExceptionCode> {
        // A register without a role (a status bit the controller only records, such as a
        // pump fault flag) means nothing to the plant: it reads 0, no fault, so a production
        // profile that maps one can still be rehearsed.
        let Some(role) = reg.role else {
            return Ok(0.0);
        };
        let state = self
            .state
            .lock()
            .map_err(|_| ExceptionCode::ServerDeviceFailure)?;
        state.read(role).ok_or(ExceptionCode::ServerDeviceFailure)
    }

    fn read_words(
        &self,
        kind: RegisterKind,
        start: u16,
        count: u16,
    ) -> Result<Vec<u16>, ExceptionCode> {
        check_count(start, count, 125)?;
        let mut words = vec![0u16; usize::from(count)];
        let mut covered = vec![false; usize::from(count)];
        for reg in self.intersecting(kind, start, count) {
            let Encoded::Words(w) =
                encode(reg, self.current(reg)?).map_err(|_| ExceptionCode::ServerDeviceFailure)?
            else {
                return Err(ExceptionCode::ServerDeviceFailure);
            };
            for (k, word) in w.iter().enumerate() {
                let addr = u32::from(reg.address) + k as u32;
                if let Some(slot) = addr
                    .checked_sub(u32::from(start))
                    .and_then(|o| usize::try_from(o).ok())
                    .filter(|&o| o < words.len())
                {
                    // Bits of one word are ORed together; other registers never overlap.
                    words[slot] |= word;
                    covered[slot] = true;
                }
            }
        }
        if covered.iter().all(|c| *c) {
            Ok(words)
        } else {
            Err(ExceptionCode::IllegalDataAddress)
        }
    }

    fn read_bits(
        &self,
        kind: RegisterKind,
        start: u16,
        count: u16,
    ) -> Result<Vec<bool>, ExceptionCode> {
        check_count(start, count, 2000)?;
        let mut bits = vec![false; usize::from(count)];
        let mut covered = vec![false; usize::from(count)];
        for reg in self.intersecting(kind, start, count) {
            let slot = usize::from(reg.address - start);
            bits[slot] = self.current(reg)? != 0.0;
            covered[slot] = true;
        }
        if covered.iter().all(|c| *c) {
            Ok(bits)
        } else {
            Err(ExceptionCode::IllegalDataAddress)
        }
    }

    /// Finds the writable registers that exactly tile `[start, start + count)`.
    fn tiling(
        &self,
        kind: RegisterKind,
        start: u16,
        count: usize,
    ) -> Result<Vec<&Register>, ExceptionCode> {
        let count = u16::try_from(count).map_err(|_| ExceptionCode::IllegalDataValue)?;
        let lo = u32::from(start);
        let hi = lo + u32::from(count);
        let mut regs: Vec<&Register> = self.intersecting(kind, start, count).collect();
        regs.sort_by_key(|r| r.address);
        let mut next = lo;
        for r in &regs {
            // A read-only register, or one the write cuts in half, cannot be written.
            if !r.writable || u32::from(r.address) != next || r.last_address() >= hi {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            next = r.last_address() + 1;
        }
        if next != hi {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(regs)
    }

    fn apply(&self, writes: Vec<(&Register, f64)>) -> Result<(), ExceptionCode> {
        // Check every value first, so a refused multi-register write changes nothing.
        for (reg, value) in &writes {
            let ok = reg
                .write_limits()
                .is_none_or(|(lo, hi)| value.is_finite() && *value >= lo && *value <= hi);
            if !ok || reg.role.is_none() {
                return Err(ExceptionCode::IllegalDataValue);
            }
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| ExceptionCode::ServerDeviceFailure)?;
        for (reg, value) in writes {
            let role = reg.role.ok_or(ExceptionCode::IllegalDataValue)?;
            if let Err(reason) = state.write(role, value) {
                tracing::debug!(register = %reg.name, value, %reason, "simulated CDU refused a write");
                return Err(ExceptionCode::IllegalDataValue);
            }
        }
        Ok(())
    }

    fn write_words(&self, start: u16, words: &[u16]) -> Result<(), ExceptionCode> {
        let regs = self.tiling(RegisterKind::Holding, start, words.len())?;
        let mut writes = Vec::with_capacity(regs.len());
        for reg in regs {
            let off = usize::from(reg.address - start);
            let slice = &words[off..off + usize::from(reg.width())];
            let value = decode_words(reg, slice).map_err(|_| ExceptionCode::IllegalDataValue)?;
            writes.push((reg, value));
        }
        self.apply(writes)
    }

    fn write_bits(&self, start: u16, bits: &[bool]) -> Result<(), ExceptionCode> {
        let regs = self.tiling(RegisterKind::Coil, start, bits.len())?;
        let writes = regs
            .into_iter()
            .map(|reg| (reg, decode_bit(bits[usize::from(reg.address - start)])))
            .collect();
        self.apply(writes)
    }
}

fn check_count(start: u16, count: u16, max: u16) -> Result<(), ExceptionCode> {
    // The protocol's quantity limits (125 registers, 2000 bits per read) and the end of the
    // address space (Modbus Application Protocol V1.1b3, §6.1–§6.4).
    if count == 0 || count > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    if u32::from(start) + u32::from(count) > 65536 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(())
}

/// Serves `state` through `profile` on `listener`, answering unit id `unit_id` only, until
/// the task is aborted.
pub async fn serve(
    listener: TcpListener,
    unit_id: u8,
    profile: Arc<CduProfile>,
    state: Arc<Mutex<dyn CduState>>,
) -> std::io::Result<()> {
    let server = Server::new(listener);
    let on_connected = move |stream, peer: SocketAddr| {
        tracing::debug!(%peer, "Modbus client connected to the simulated CDU");
        let service = CduService {
            unit_id,
            profile: Arc::clone(&profile),
            state: Arc::clone(&state),
        };
        async move { Ok(Some((service, stream))) }
    };
    let on_process_error = |err: std::io::Error| {
        tracing::debug!(error = %err, "simulated CDU connection ended with an error");
    };
    server.serve(&on_connected, on_process_error).await
}

/// Binds `addr` (for example `127.0.0.1:0`) and serves the simulated CDU as unit id 1 on a
/// task. Returns the bound address and the task; abort the task to stop the server.
pub async fn spawn(
    addr: &str,
    profile: Arc<CduProfile>,
    state: Arc<Mutex<dyn CduState>>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    spawn_unit(addr, 1, profile, state).await
}

/// Like [`spawn`], answering unit id `unit_id` only (`simulator.unit_id`).
pub async fn spawn_unit(
    addr: &str,
    unit_id: u8,
    profile: Arc<CduProfile>,
    state: Arc<Mutex<dyn CduState>>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = serve(listener, unit_id, profile, state).await {
            tracing::warn!(error = %e, address = %local, "simulated CDU server stopped");
        }
    });
    Ok((local, task))
}
