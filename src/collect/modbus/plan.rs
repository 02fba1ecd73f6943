//! Request planning: the fewest read requests that cover a profile's registers.
//!
//! Registers of one kind are sorted by address and merged greedily into one request while
//! the next register starts within `max_gap` unmapped addresses of the current end and the
//! request stays within the per-request limit (125 registers or 2000 bits by the protocol,
//! less where the profile says the CDU wants less).

use crate::profile::cdu::{CduProfile, Register, RegisterKind};

/// One read request and the registers it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub kind: RegisterKind,
    /// First address read.
    pub start: u16,
    /// Number of registers (or bits) read.
    pub count: u16,
    /// Indexes into the profile's `registers`, in address order.
    pub registers: Vec<usize>,
}

impl ReadRequest {
    /// The slice of a response that belongs to `reg`.
    pub fn offset_of(&self, reg: &Register) -> usize {
        usize::from(reg.address - self.start)
    }
}

/// Limits that shape a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    pub max_registers: u16,
    pub max_bits: u16,
    pub max_gap: u16,
}

impl PlanLimits {
    pub fn of(profile: &CduProfile) -> PlanLimits {
        PlanLimits {
            max_registers: profile.max_read_registers,
            max_bits: profile.max_read_bits,
            max_gap: profile.max_gap,
        }
    }
}

/// Plans the reads of every register of a profile.
pub fn plan(profile: &CduProfile) -> Vec<ReadRequest> {
    plan_registers(&profile.registers, PlanLimits::of(profile))
}

/// Plans the reads of `registers` under `limits`. Requests come out ordered by kind, then
/// address. A register wider than the per-request limit cannot occur (the widest type is 4
/// words); should limits be that small the register still gets a request of its own.
pub fn plan_registers(registers: &[Register], limits: PlanLimits) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].kind, registers[i].address));
    let mut out: Vec<ReadRequest> = Vec::new();
    // The end (exclusive, as u32 to avoid overflow at 65535) of the request being built.
    let mut end: u32 = 0;
    for i in order {
        let r = &registers[i];
        let max = u32::from(if r.kind.is_bit() {
            limits.max_bits
        } else {
            limits.max_registers
        });
        let r_start = u32::from(r.address);
        let r_end = r.last_address() + 1;
        if let Some(cur) = out.last_mut() {
            let joinable = cur.kind == r.kind
                && r_start <= end + u32::from(limits.max_gap)
                && r_end.max(end) - u32::from(cur.start) <= max;
            if joinable {
                end = end.max(r_end);
                cur.count = u16::try_from(end - u32::from(cur.start))
                    .expect("a request spans at most 2000 addresses");
                cur.registers.push(i);
                continue;
            }
        }
        end = r_end;
        out.push(ReadRequest {
            kind: r.kind,
            start: r.address,
            count: u16::try_from(r_end - r_start).expect("a register spans at most 4 words"),
            registers: vec![i],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::cdu::{ByteOrder, DataType};

    fn reg(kind: RegisterKind, address: u16, data_type: DataType) -> Register {
        Register {
            name: format!("{kind}{address}"),
            role: None,
            kind,
            address,
            data_type,
            order: ByteOrder::Abcd,
            bit: None,
            scale: None,
            offset: None,
            unit: String::new(),
            description: String::new(),
            plausible: None,
            writable: false,
            limits: None,
        }
    }

    const LIMITS: PlanLimits = PlanLimits {
        max_registers: 125,
        max_bits: 2000,
        max_gap: 0,
    };

    #[test]
    fn contiguous_registers_of_one_kind_share_a_request() {
        let regs = vec![
            reg(RegisterKind::Input, 2, DataType::Float32),
            reg(RegisterKind::Input, 0, DataType::Float32),
            reg(RegisterKind::Input, 4, DataType::Int16),
            reg(RegisterKind::Holding, 0, DataType::Uint16),
            reg(RegisterKind::Discrete, 0, DataType::Bit),
            reg(RegisterKind::Discrete, 1, DataType::Bit),
        ];
        let p = plan_registers(&regs, LIMITS);
        assert_eq!(
            p,
            vec![
                ReadRequest {
                    kind: RegisterKind::Discrete,
                    start: 0,
                    count: 2,
                    registers: vec![4, 5]
                },
                ReadRequest {
                    kind: RegisterKind::Input,
                    start: 0,
                    count: 5,
                    registers: vec![1, 0, 2]
                },
                ReadRequest {
                    kind: RegisterKind::Holding,
                    start: 0,
                    count: 1,
                    registers: vec![3]
                },
            ]
        );
    }

    #[test]
    fn gaps_split_unless_allowed() {
        let regs = vec![
            reg(RegisterKind::Input, 0, DataType::Int16),
            reg(RegisterKind::Input, 4, DataType::Int16),
        ];
        assert_eq!(plan_registers(&regs, LIMITS).len(), 2);
        let p = plan_registers(
            &regs,
            PlanLimits {
                max_gap: 3,
                ..LIMITS
            },
        );
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start, p[0].count), (0, 5));
        assert_eq!(p[0].offset_of(&regs[1]), 4);
    }

    #[test]
    fn requests_never_exceed_the_protocol_limits() {
        // 100 contiguous FLOAT64 (400 words) must split into requests of <= 125 words that
        // never cut a register in half.
        let regs: Vec<Register> = (0..100)
            .map(|i| reg(RegisterKind::Holding, i * 4, DataType::Float64))
            .collect();
        let p = plan_registers(&regs, LIMITS);
        assert!(p.iter().all(|r| r.count <= 125));
        assert_eq!(p.len(), 4, "{p:?}");
        let covered: usize = p.iter().map(|r| r.registers.len()).sum();
        assert_eq!(covered, 100);
        for rq in &p {
            for &i in &rq.registers {
                assert!(regs[i].last_address() < u32::from(rq.start) + u32::from(rq.count));
            }
        }
        let bits: Vec<Register> = (0..4500)
            .map(|i| reg(RegisterKind::Coil, i, DataType::Bit))
            .collect();
        let p = plan_registers(&bits, LIMITS);
        assert_eq!(
            p.iter().map(|r| r.count).collect::<Vec<_>>(),
            [2000, 2000, 500]
        );
    }

    #[test]
    fn bits_of_one_word_share_it() {
        let mut a = reg(RegisterKind::Input, 7, DataType::Bit);
        a.bit = Some(0);
        let mut b = reg(RegisterKind::Input, 7, DataType::Bit);
        b.bit = Some(1);
        let p = plan_registers(&[a, b], LIMITS);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start, p[0].count), (7, 1));
    }

    #[test]
    fn last_address_does_not_overflow() {
        let regs = vec![
            reg(RegisterKind::Input, 65533, DataType::Int16),
            reg(RegisterKind::Input, 65534, DataType::Float32),
        ];
        let p = plan_registers(&regs, LIMITS);
        assert_eq!((p[0].start, p[0].count), (65533, 3));
    }
}
