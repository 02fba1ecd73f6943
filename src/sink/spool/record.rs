//! The record framing of a segment, and the check of a whole segment when the spool opens.
//! Pure functions over bytes (no files): `encode` writes a record, `parse_at` reads one,
//! `resync` finds the next valid record after damage, `scan` walks a segment and reports
//! its valid records, damaged stretches and torn tail.

/// The record marker. 0xFF never occurs in UTF-8, so never inside a payload.
pub(super) const MAGIC: [u8; 4] = [0xFF, b'C', b'S', 0x02];
/// The largest record accepted. A line-protocol line of a coolantd point is a few hundred
/// bytes; anything near this is a bug, and the limit keeps a corrupt length from making the
/// reader allocate gigabytes.
pub(super) const MAX_RECORD: u32 = 1 << 20;

/// The record framing of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// `len | crc32(payload) | payload`: segments written before the magic existed.
    Legacy,
    /// `magic | len | crc32(len, payload) | payload`.
    Marked,
}

impl Format {
    pub(super) fn header(self) -> usize {
        match self {
            Format::Legacy => 8,
            Format::Marked => 12,
        }
    }

    /// The format of a segment's bytes: any magic in it means the current format (a legacy
    /// header holds the magic only if a checksum happens to equal it, one chance in 2^32).
    pub(super) fn detect(buf: &[u8]) -> Format {
        if buf.is_empty() || find_magic(buf, 0).is_some() {
            Format::Marked
        } else {
            Format::Legacy
        }
    }
}

pub(super) fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .map(|p| from + p)
}

pub(super) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The record starting at `off`, if it is whole and valid: its payload range.
pub(super) fn parse_at(buf: &[u8], off: usize, fmt: Format) -> Option<(usize, usize)> {
    let hl = fmt.header();
    let h = buf.get(off..off.checked_add(hl)?)?;
    let (len_b, crc_b) = match fmt {
        Format::Marked if h[..4] != MAGIC => return None,
        Format::Marked => (&h[4..8], &h[8..12]),
        Format::Legacy => (&h[..4], &h[4..8]),
    };
    let len = le32(len_b);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let start = off + hl;
    let end = start + len as usize;
    let payload = buf.get(start..end)?;
    let crc = match fmt {
        Format::Marked => {
            let mut h = crc32fast::Hasher::new();
            h.update(len_b);
            h.update(payload);
            h.finalize()
        }
        Format::Legacy => crc32fast::hash(payload),
    };
    (crc == le32(crc_b)).then_some((start, end))
}

/// The first offset at or after `from` where a valid record starts.
pub(super) fn resync(buf: &[u8], from: usize, fmt: Format) -> Option<usize> {
    match fmt {
        Format::Marked => {
            let mut at = from;
            while let Some(p) = find_magic(buf, at) {
                if parse_at(buf, p, fmt).is_some() {
                    return Some(p);
                }
                at = p + 1;
            }
            None
        }
        // No marker: every offset is a candidate. A coolantd line ends in a newline, which
        // rejects almost every wrong offset before the checksum is computed.
        Format::Legacy => (from..buf.len().saturating_sub(8)).find(|&o| {
            let len = le32(&buf[o..o + 4]) as usize;
            len > 0
                && len <= MAX_RECORD as usize
                && buf.get(o + 8 + len - 1) == Some(&b'\n')
                && parse_at(buf, o, fmt).is_some()
        }),
    }
}

/// How many records a damaged stretch held: the markers in it (at least one). Legacy
/// segments have no markers; a damaged stretch there counts as one record.
pub(super) fn records_in(buf: &[u8], fmt: Format) -> u64 {
    match fmt {
        Format::Marked => (buf.windows(MAGIC.len()).filter(|w| *w == MAGIC).count() as u64).max(1),
        Format::Legacy => 1,
    }
}

/// Encodes one record in the current format.
pub(super) fn encode(buf: &mut Vec<u8>, payload: &[u8], len: u32) {
    let len_b = len.to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len_b);
    h.update(payload);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&len_b);
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(payload);
}

/// What the open-time check found in one segment.
pub(super) struct Scan {
    pub(super) format: Format,
    /// End of the last valid record.
    pub(super) good: u64,
    pub(super) records: u64,
    /// Damaged stretches between valid records: (start, end, records in it).
    pub(super) skips: Vec<(u64, u64, u64)>,
    /// Bytes after the last valid record.
    pub(super) tail: u64,
    /// Records in the tail, as far as they can be counted.
    pub(super) tail_records: u64,
    /// For the cursor's segment: the last record boundary at or before the cursor's offset,
    /// and the valid records before it.
    pub(super) at: Option<(u64, u64)>,
}

pub(super) fn scan(buf: &[u8], want: Option<u64>) -> Scan {
    let format = Format::detect(buf);
    let (mut off, mut good, mut records) = (0usize, 0usize, 0u64);
    let mut skips = Vec::new();
    let mut at = want.map(|_| (0u64, 0u64));
    let note = |off: usize, records: u64, at: &mut Option<(u64, u64)>| {
        if let (Some(w), Some(a)) = (want, at.as_mut()) {
            if off as u64 <= w {
                *a = (off as u64, records);
            }
        }
    };
    while off < buf.len() {
        if let Some((_, end)) = parse_at(buf, off, format) {
            note(off, records, &mut at);
            records += 1;
            off = end;
            good = end;
            continue;
        }
        match resync(buf, off + 1, format) {
            Some(next) => {
                note(off, records, &mut at);
                skips.push((off as u64, next as u64, records_in(&buf[off..next], format)));
                off = next;
            }
            None => break,
        }
    }
    note(good, records, &mut at);
    Scan {
        format,
        good: good as u64,
        records,
        skips,
        tail: (buf.len() - good) as u64,
        tail_records: if buf.len() > good {
            records_in(&buf[good..], format)
        } else {
            0
        },
        at,
    }
}
