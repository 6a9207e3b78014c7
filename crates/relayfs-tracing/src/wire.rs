//! The record format: what the payload of each framed record holds, how it
//! is written ([`Enc`]) and parsed ([`parse`]). Byte by byte in the crate
//! documentation and in `docs/DESIGN.md` ("Tracing records").

use std::fmt;

/// Record kind: a callsite's strings, once per callsite.
pub const KIND_CALLSITE: u8 = 1;
/// Record kind: an event.
pub const KIND_EVENT: u8 = 2;
/// Record kind: a new span and its values.
pub const KIND_NEW_SPAN: u8 = 3;
/// Record kind: a thread entered a span.
pub const KIND_ENTER: u8 = 4;
/// Record kind: a thread left a span.
pub const KIND_EXIT: u8 = 5;
/// Record kind: a span was closed (its id may be used again).
pub const KIND_CLOSE: u8 = 6;
/// Record kind: values recorded into a span after it was made.
pub const KIND_RECORD: u8 = 7;
/// Record kind: records the layer could not write, per buffer.
pub const KIND_LOST: u8 = 8;
/// Record kind: as [`KIND_LOST`], then a whole record (so a loss and the
/// record after it take one reservation).
pub const KIND_LOST_THEN: u8 = 10;
/// Record kind: a pair of clock readings, monotonic and wall.
pub const KIND_CLOCK: u8 = 9;
/// Record kind: an anchor of the layer's TSC clock, its reading and a
/// `CLOCK_MONOTONIC` reading taken together (the decoder maps timestamps
/// to `CLOCK_MONOTONIC` between anchors).
pub const KIND_ANCHOR: u8 = 11;

/// Value tag: `i64`, zigzag varint.
pub const TAG_I64: u8 = 0;
/// Value tag: `u64`, varint.
pub const TAG_U64: u8 = 1;
/// Value tag: `i128`, 16 bytes little-endian.
pub const TAG_I128: u8 = 2;
/// Value tag: `u128`, 16 bytes little-endian.
pub const TAG_U128: u8 = 3;
/// Value tag: `f64`, 8 bytes little-endian.
pub const TAG_F64: u8 = 4;
/// Value tag: `false`.
pub const TAG_FALSE: u8 = 5;
/// Value tag: `true`.
pub const TAG_TRUE: u8 = 6;
/// Value tag: a string (varint length, UTF-8 bytes).
pub const TAG_STR: u8 = 7;
/// Value tag: a value's `Debug` text (varint length, UTF-8 bytes).
pub const TAG_DEBUG: u8 = 8;
/// Value tag: an error's `Display` text and its sources' (varint length,
/// UTF-8 bytes).
pub const TAG_ERROR: u8 = 9;

/// Callsite kind byte: an event.
pub const CALLSITE_EVENT: u8 = 0;
/// Callsite kind byte: a span.
pub const CALLSITE_SPAN: u8 = 1;

/// Levels, most verbose first (the level byte of a callsite record).
pub const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

/// Appends the encoding of values to a byte vector.
#[derive(Debug, Default)]
pub struct Enc {
    /// The bytes.
    pub buf: Vec<u8>,
}

impl Enc {
    /// A varint: 7 bits a byte, low first, high bit set on all but the last.
    #[inline(always)]
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// A byte.
    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        self.buf.push(b);
    }

    /// A string: varint length, bytes.
    #[inline(always)]
    pub fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }
}

/// Zigzag: small negative numbers get small varints.
#[inline(always)]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The inverse of [`zigzag`].
#[inline(always)]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A field value as recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// `i64`.
    I64(i64),
    /// `u64`.
    U64(u64),
    /// `i128`.
    I128(i128),
    /// `u128`.
    U128(u128),
    /// `f64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// A string.
    Str(&'a str),
    /// A value's `Debug` text.
    Debug(&'a str),
    /// An error's text.
    Error(&'a str),
}

/// A callsite's strings, as its callsite record holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallsiteInfo<'a> {
    /// The callsite's id in this recording.
    pub id: u64,
    /// Whether it is a span's callsite (else an event's).
    pub span: bool,
    /// The level, 0 (TRACE) to 4 (ERROR).
    pub level: u8,
    /// The line, if known.
    pub line: Option<u32>,
    /// The name (a span's name; `event file:line` for an event).
    pub name: &'a str,
    /// The target.
    pub target: &'a str,
    /// The module path (empty if unknown).
    pub module_path: &'a str,
    /// The file (empty if unknown).
    pub file: &'a str,
    /// The field names, in the callsite's order.
    pub fields: Vec<&'a str>,
}

/// One record, parsed. Values are parsed lazily ([`Values`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// A callsite's strings.
    Callsite(CallsiteInfo<'a>),
    /// An event.
    Event {
        /// Its callsite's id.
        callsite: u64,
        /// The thread (Linux thread id).
        thread: u64,
        /// Its values.
        values: Values<'a>,
    },
    /// A new span.
    NewSpan {
        /// Its callsite's id.
        callsite: u64,
        /// The thread that made it.
        thread: u64,
        /// The span's id.
        span: u64,
        /// Its parent span's id, 0 for none.
        parent: u64,
        /// Its values.
        values: Values<'a>,
    },
    /// A thread entered a span.
    Enter {
        /// The thread.
        thread: u64,
        /// The span.
        span: u64,
    },
    /// A thread left a span.
    Exit {
        /// The thread.
        thread: u64,
        /// The span.
        span: u64,
    },
    /// A span was closed.
    Close {
        /// The thread.
        thread: u64,
        /// The span.
        span: u64,
    },
    /// Values recorded into a span later.
    Record {
        /// The thread.
        thread: u64,
        /// The span.
        span: u64,
        /// The values.
        values: Values<'a>,
    },
    /// Records the layer could not write since it last said so, per buffer;
    /// then, for [`KIND_LOST_THEN`], the payload of the record that follows.
    Lost {
        /// The losses.
        losses: Vec<Loss>,
        /// The record written with them.
        then: Option<&'a [u8]>,
    },
    /// A monotonic and a wall clock reading taken together.
    Clock {
        /// `CLOCK_MONOTONIC`, ns.
        monotonic: u64,
        /// `CLOCK_REALTIME`, ns since the Unix epoch.
        realtime: u64,
    },
    /// The layer's clock (the scaled TSC of the timestamps) and
    /// `CLOCK_MONOTONIC`, read together.
    Anchor {
        /// The layer's clock, ns (what a timestamp read then would be).
        clock: u64,
        /// `CLOCK_MONOTONIC`, ns.
        monotonic: u64,
    },
}

/// What the layer could not write into one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// The buffer (CPU) that refused them.
    pub buffer: u64,
    /// Events and span records.
    pub events: u64,
    /// Callsite records (each is written again later).
    pub callsites: u64,
}

/// Appends the losses of a lost record.
pub fn encode_losses(e: &mut Enc, losses: &[Loss]) {
    e.varint(losses.len() as u64);
    for l in losses {
        e.varint(l.buffer);
        e.varint(l.events);
        e.varint(l.callsites);
    }
}

/// Why a payload is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Offset in the payload where it went wrong.
    pub at: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at payload byte {}", self.what, self.at)
    }
}

impl std::error::Error for WireError {}

/// A reader of payload bytes; every read is bounds-checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    /// Reads `b` from its start.
    pub fn new(b: &'a [u8]) -> Self {
        Cur { b, at: 0 }
    }

    fn err<T>(&self, what: &'static str) -> Result<T, WireError> {
        Err(WireError { at: self.at, what })
    }

    /// Whether everything is read.
    pub fn is_empty(&self) -> bool {
        self.at >= self.b.len()
    }

    /// A byte.
    #[inline]
    pub fn byte(&mut self) -> Result<u8, WireError> {
        match self.b.get(self.at) {
            Some(&v) => {
                self.at += 1;
                Ok(v)
            }
            None => self.err("record ends early"),
        }
    }

    /// A varint of at most 10 bytes.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        // Most varints (ids, indexes, lengths) are one byte.
        if let Some(&b) = self.b.get(self.at) {
            if b < 0x80 {
                self.at += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, WireError> {
        let start = self.at.min(self.b.len());
        let rest = &self.b[start..];
        let mut v = 0u64;
        for (i, &b) in rest.iter().take(10).enumerate() {
            if i == 9 && b > 1 {
                self.at = start + 10;
                return self.err("varint overflows 64 bits");
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.at = start + i + 1;
                return Ok(v);
            }
        }
        self.at = start + rest.len().min(10);
        if rest.len() < 10 {
            self.err("record ends early")
        } else {
            self.err("varint longer than 10 bytes")
        }
    }

    /// `n` bytes.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        match self.b.get(self.at..self.at.saturating_add(n)) {
            Some(s) if self.at.checked_add(n).is_some() => {
                self.at += n;
                Ok(s)
            }
            _ => self.err("record ends early"),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// A string: varint length, UTF-8 bytes.
    #[inline]
    pub fn str(&mut self) -> Result<&'a str, WireError> {
        let at = self.at;
        let n = self.varint()?;
        let n = usize::try_from(n).or_else(|_| self.err("string length too large"))?;
        let b = self.bytes(n)?;
        std::str::from_utf8(b).map_err(|_| WireError {
            at,
            what: "string is not UTF-8",
        })
    }
}

/// The values of an event or span: `(field index, value)` pairs, parsed as
/// they are iterated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Values<'a>(pub Cur<'a>);

impl<'a> Iterator for Values<'a> {
    type Item = Result<(u64, Value<'a>), WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let r = parse_value(&mut self.0);
        if r.is_err() {
            // Nothing after a bad value can be trusted.
            self.0.at = self.0.b.len();
        }
        Some(r)
    }
}

#[inline(always)]
fn parse_value<'a>(c: &mut Cur<'a>) -> Result<(u64, Value<'a>), WireError> {
    let field = c.varint()?;
    let at = c.at;
    let v = match c.byte()? {
        TAG_I64 => Value::I64(unzigzag(c.varint()?)),
        TAG_U64 => Value::U64(c.varint()?),
        TAG_I128 => Value::I128(i128::from_le_bytes(c.array()?)),
        TAG_U128 => Value::U128(u128::from_le_bytes(c.array()?)),
        TAG_F64 => Value::F64(f64::from_le_bytes(c.array()?)),
        TAG_FALSE => Value::Bool(false),
        TAG_TRUE => Value::Bool(true),
        TAG_STR => Value::Str(c.str()?),
        TAG_DEBUG => Value::Debug(c.str()?),
        TAG_ERROR => Value::Error(c.str()?),
        _ => {
            return Err(WireError {
                at,
                what: "unknown value tag",
            })
        }
    };
    Ok((field, v))
}

/// Parses one record's payload.
///
/// # Errors
/// What is wrong and where: an unknown kind, a record cut short, a bad
/// string. Values are checked as they are iterated.
pub fn parse(payload: &[u8]) -> Result<Item<'_>, WireError> {
    let mut c = Cur::new(payload);
    let item = match c.byte()? {
        KIND_CALLSITE => {
            let id = c.varint()?;
            let kind = c.byte()?;
            if kind > CALLSITE_SPAN {
                return c.err("unknown callsite kind");
            }
            let level = c.byte()?;
            if usize::from(level) >= LEVELS.len() {
                return c.err("unknown level");
            }
            let line = c.varint()?;
            let line = match line {
                0 => None,
                l => Some(u32::try_from(l - 1).or_else(|_| c.err("line too large"))?),
            };
            let name = c.str()?;
            let target = c.str()?;
            let module_path = c.str()?;
            let file = c.str()?;
            let n = c.varint()?;
            // Every name takes at least one byte: a count larger than what
            // is left is a lie, not a reason to allocate.
            if n > (payload.len() - c.at) as u64 {
                return c.err("field count larger than the record");
            }
            let mut fields = Vec::with_capacity(n as usize);
            for _ in 0..n {
                fields.push(c.str()?);
            }
            Item::Callsite(CallsiteInfo {
                id,
                span: kind == CALLSITE_SPAN,
                level,
                line,
                name,
                target,
                module_path,
                file,
                fields,
            })
        }
        KIND_EVENT => Item::Event {
            callsite: c.varint()?,
            thread: c.varint()?,
            values: Values(c),
        },
        KIND_NEW_SPAN => Item::NewSpan {
            callsite: c.varint()?,
            thread: c.varint()?,
            span: c.varint()?,
            parent: c.varint()?,
            values: Values(c),
        },
        k @ (KIND_ENTER | KIND_EXIT | KIND_CLOSE) => {
            let thread = c.varint()?;
            let span = c.varint()?;
            match k {
                KIND_ENTER => Item::Enter { thread, span },
                KIND_EXIT => Item::Exit { thread, span },
                _ => Item::Close { thread, span },
            }
        }
        KIND_RECORD => Item::Record {
            thread: c.varint()?,
            span: c.varint()?,
            values: Values(c),
        },
        k @ (KIND_LOST | KIND_LOST_THEN) => {
            let n = c.varint()?;
            // Three bytes an entry at least.
            if n > ((payload.len() - c.at) / 3) as u64 {
                return c.err("loss count larger than the record");
            }
            let mut losses = Vec::with_capacity(n as usize);
            for _ in 0..n {
                losses.push(Loss {
                    buffer: c.varint()?,
                    events: c.varint()?,
                    callsites: c.varint()?,
                });
            }
            let then = if k == KIND_LOST_THEN {
                let rest = &payload[c.at..];
                match rest.first() {
                    None => return c.err("no record after the losses"),
                    Some(&(KIND_LOST | KIND_LOST_THEN)) => {
                        return c.err("a lost record inside a lost record")
                    }
                    Some(_) => Some(rest),
                }
            } else {
                None
            };
            Item::Lost { losses, then }
        }
        KIND_CLOCK => Item::Clock {
            monotonic: c.varint()?,
            realtime: c.varint()?,
        },
        KIND_ANCHOR => Item::Anchor {
            clock: c.varint()?,
            monotonic: c.varint()?,
        },
        _ => {
            return Err(WireError {
                at: 0,
                what: "unknown record kind",
            })
        }
    };
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut e = Enc::default();
            e.varint(v);
            let mut c = Cur::new(&e.buf);
            assert_eq!(c.varint(), Ok(v));
            assert!(c.is_empty());
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert!(zigzag(-1) < 2);
    }

    #[test]
    fn bad_varints_are_errors() {
        assert!(Cur::new(&[0xff; 11]).varint().is_err());
        assert!(
            Cur::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .varint()
                .is_err()
        );
        assert!(Cur::new(&[0x80]).varint().is_err());
    }

    #[test]
    fn every_prefix_of_a_record_is_an_error_not_a_panic() {
        let mut e = Enc::default();
        e.byte(KIND_CALLSITE);
        e.varint(3);
        e.byte(CALLSITE_EVENT);
        e.byte(2);
        e.varint(11);
        for s in ["name", "target", "mod", "file.rs"] {
            e.str(s);
        }
        e.varint(2);
        e.str("message");
        e.str("a");
        assert!(parse(&e.buf).is_ok());
        for n in 0..e.buf.len() {
            assert!(parse(&e.buf[..n]).is_err(), "prefix {n}");
        }
    }
}
