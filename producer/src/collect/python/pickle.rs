//! A pickle decoder that only builds plain data.
//!
//! Python's `logging.handlers.SocketHandler` and `DatagramHandler` send each
//! record as a pickled dict. Unpickling untrusted bytes with Python's own
//! `pickle` runs whatever the pickle names (`os.system` through `GLOBAL` +
//! `REDUCE` is the classic), so this decoder is a small pickle machine of its
//! own: it knows the opcodes that build `None`, booleans, numbers, strings,
//! bytes, tuples, lists, dicts and sets (protocols 0 to 5) and refuses every
//! opcode that names or constructs an object (`GLOBAL`, `STACK_GLOBAL`,
//! `REDUCE`, `BUILD`, `INST`, `OBJ`, `NEWOBJ`, `NEWOBJ_EX`, `EXT*`,
//! `PERSID`, out-of-band buffers) with an error naming the opcode — it never
//! calls, imports or executes anything.
//!
//! Containers live in an arena while decoding, so the memo (`PUT`/`GET`)
//! shares them the way Python does (a dict is memoised before its items are
//! set). The tree handed out is built from the arena with bounded depth and
//! size: a recursive structure or a pickle that references one container
//! exponentially often is an error, not a hang.

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond `i64`, as decimal text.
    BigInt(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Keys and values in insertion order (as Python's dicts).
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
}

impl Value {
    /// The value of `key` in a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Why a pickle was not decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    #[error("refused opcode {name} (0x{op:02x}) at byte {at}: it names or builds a Python object, and only plain data is decoded")]
    Refused {
        op: u8,
        name: &'static str,
        at: usize,
    },
    #[error("unknown opcode 0x{op:02x} at byte {at}")]
    Unknown { op: u8, at: usize },
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("malformed at byte {at}: {what}")]
    Malformed { at: usize, what: String },
    #[error("nesting deeper than {MAX_DEPTH}, recursive, or more than {MAX_NODES} values")]
    TooBig,
    #[error("no STOP opcode")]
    NoStop,
}

/// Deepest nesting of containers handed out.
pub const MAX_DEPTH: usize = 64;
/// Most values in the tree handed out.
pub const MAX_NODES: usize = 1 << 20;
/// Longest LONG4 integer: 4300 decimal digits (Python's default
/// `sys.int_max_str_digits`); converting a longer one to text is quadratic.
const MAX_INT_BYTES: usize = 1786;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Item {
    /// An index into the arena.
    Node(usize),
    Mark,
}

#[derive(Debug)]
enum Node {
    Scalar(Value),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    arena: Vec<Node>,
    stack: Vec<Item>,
    /// Memo key → arena index (`usize::MAX`: not set). Keys are small and
    /// dense in practice (Python numbers them 0, 1, 2 …).
    memo: Vec<usize>,
    /// `MEMOIZE` (protocol 4) numbers entries itself.
    next_memo: u32,
}

fn refused(op: u8) -> Option<&'static str> {
    Some(match op {
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        b'R' => "REDUCE",
        b'b' => "BUILD",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// Decodes one pickle (the bytes after SocketHandler's 4-byte length).
pub fn decode(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        memo: Vec::new(),
        next_memo: 0,
    };
    let top = m.run()?;
    let refs = m.refs(top);
    let mut budget = MAX_NODES;
    m.build(top, 0, &mut budget, &refs, false)
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        if self.data.len() - self.pos < n {
            return Err(PickleError::Truncated(self.data.len()));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("length"))
    }

    /// A length prefix, checked against what is left (no huge allocation
    /// from a lying prefix).
    fn len_u32(&mut self) -> Result<usize, PickleError> {
        let n = u32::from_le_bytes(self.le()?) as usize;
        self.check_left(n)
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.le()?);
        self.check_left(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn check_left(&self, n: usize) -> Result<usize, PickleError> {
        if n > self.data.len() - self.pos {
            return Err(PickleError::Truncated(self.data.len()));
        }
        Ok(n)
    }

    /// A text argument up to `\n` (protocol 0 opcodes).
    fn line(&mut self) -> Result<&[u8], PickleError> {
        let rest = &self.data[self.pos..];
        let i = memchr::memchr(b'\n', rest).ok_or(PickleError::Truncated(self.data.len()))?;
        self.pos += i + 1;
        Ok(&rest[..i])
    }

    fn malformed(&self, what: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.pos,
            what: what.into(),
        }
    }

    fn push(&mut self, n: Node) {
        self.arena.push(n);
        self.stack.push(Item::Node(self.arena.len() - 1));
    }

    fn scalar(&mut self, v: Value) {
        self.push(Node::Scalar(v));
    }

    fn pop(&mut self) -> Result<usize, PickleError> {
        match self.stack.pop() {
            Some(Item::Node(i)) => Ok(i),
            Some(Item::Mark) => Err(self.malformed("a mark where a value was expected")),
            None => Err(self.malformed("stack underflow")),
        }
    }

    fn top(&self) -> Result<usize, PickleError> {
        match self.stack.last() {
            Some(Item::Node(i)) => Ok(*i),
            _ => Err(self.malformed("no value on the stack")),
        }
    }

    /// The values above the topmost mark, removing them and the mark.
    fn pop_mark(&mut self) -> Result<Vec<usize>, PickleError> {
        let m = self
            .stack
            .iter()
            .rposition(|i| *i == Item::Mark)
            .ok_or_else(|| self.malformed("no mark"))?;
        let items = self
            .stack
            .drain(m..)
            .skip(1)
            .map(|i| match i {
                Item::Node(n) => n,
                Item::Mark => unreachable!("rposition found the topmost mark"),
            })
            .collect();
        self.stack.truncate(m);
        Ok(items)
    }

    fn text(&self, b: &[u8]) -> Result<String, PickleError> {
        String::from_utf8(b.to_vec()).map_err(|_| self.malformed("string is not UTF-8"))
    }

    fn int_text(&mut self, t: &[u8]) -> Result<Value, PickleError> {
        let t = std::str::from_utf8(t).map_err(|_| self.malformed("integer text"))?;
        let t = t.trim_end_matches('L');
        let t = t.trim();
        match t {
            "00" => return Ok(Value::Bool(false)),
            "01" => return Ok(Value::Bool(true)),
            _ => {}
        }
        if let Ok(n) = t.parse::<i64>() {
            return Ok(Value::Int(n));
        }
        let (neg, digits) = match t.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        if digits.len() > 4300 {
            return Err(
                self.malformed("an integer longer than Python prints (sys.int_max_str_digits)")
            );
        }
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            // Python reads "007" as 7: no leading zeros (they are not JSON either).
            let digits = digits.trim_start_matches('0');
            let text = format!("{}{digits}", if neg { "-" } else { "" });
            Ok(match text.parse::<i64>() {
                Ok(n) => Value::Int(n),
                Err(_) if digits.is_empty() => Value::Int(0),
                Err(_) => Value::BigInt(text),
            })
        } else {
            Err(self.malformed(format!("integer {t:?}")))
        }
    }

    /// LONG1 / LONG4: little-endian two's complement.
    fn long_bytes(b: &[u8]) -> Value {
        if b.is_empty() {
            return Value::Int(0);
        }
        if b.len() <= 8 {
            let neg = b[b.len() - 1] & 0x80 != 0;
            let mut buf = [if neg { 0xff } else { 0 }; 8];
            buf[..b.len()].copy_from_slice(b);
            return Value::Int(i64::from_le_bytes(buf));
        }
        Value::BigInt(big_decimal(b))
    }

    fn string_escaped(&self, t: &[u8]) -> Result<Value, PickleError> {
        // Protocol 0 STRING: a quoted Python 2 str literal.
        let q = t.first().copied();
        if t.len() < 2 || !(q == Some(b'\'') || q == Some(b'"')) || t[t.len() - 1] != q.unwrap() {
            return Err(self.malformed("STRING argument is not quoted"));
        }
        let bytes = unescape(&t[1..t.len() - 1], false).ok_or_else(|| self.malformed("escape"))?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => Value::Str(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        })
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let top = self.top()?;
        let k = key as usize;
        if k >= MAX_NODES {
            return Err(PickleError::TooBig);
        }
        if k >= self.memo.len() {
            self.memo.resize(k + 1, usize::MAX);
        }
        self.memo[k] = top;
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        match self.memo.get(key as usize) {
            Some(&i) if i != usize::MAX => {
                self.stack.push(Item::Node(i));
                Ok(())
            }
            _ => Err(self.malformed(format!("memo {key} not set"))),
        }
    }

    fn add_to_list(&mut self, items: Vec<usize>) -> Result<(), PickleError> {
        let l = self.top()?;
        match &mut self.arena[l] {
            Node::List(v) => v.extend(items),
            _ => return Err(self.malformed("APPEND to something not a list")),
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<usize>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of dict items"));
        }
        let d = self.top()?;
        match &mut self.arena[d] {
            Node::Dict(v) => v.extend(items.chunks(2).map(|kv| (kv[0], kv[1]))),
            _ => return Err(self.malformed("SETITEM on something not a dict")),
        }
        Ok(())
    }

    fn run(&mut self) -> Result<usize, PickleError> {
        loop {
            if self.arena.len() > MAX_NODES || self.stack.len() > MAX_NODES {
                return Err(PickleError::TooBig);
            }
            let at = self.pos;
            let Ok(op) = self.u8() else {
                return Err(PickleError::NoStop);
            };
            if let Some(name) = refused(op) {
                return Err(PickleError::Refused { op, name, at });
            }
            match op {
                b'.' => {
                    // STOP
                    let top = self.pop()?;
                    return Ok(top);
                }
                0x80 => {
                    // PROTO
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.malformed(format!("protocol {v}")));
                    }
                }
                0x95 => {
                    // FRAME: only a length hint.
                    self.le::<8>()?;
                }
                b'(' => self.stack.push(Item::Mark),
                b'0' => {
                    // POP (a mark too)
                    self.stack
                        .pop()
                        .ok_or_else(|| self.malformed("stack underflow"))?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(Item::Node(t));
                }
                b'N' => self.scalar(Value::None),
                0x88 => self.scalar(Value::Bool(true)),
                0x89 => self.scalar(Value::Bool(false)),
                b'I' => {
                    let t = self.line()?.to_vec();
                    let v = self.int_text(&t)?;
                    self.scalar(v);
                }
                b'L' => {
                    let t = self.line()?.to_vec();
                    let v = self.int_text(&t)?;
                    let v = match v {
                        Value::Bool(b) => Value::Int(b as i64),
                        v => v,
                    };
                    self.scalar(v);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.scalar(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.scalar(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.scalar(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    // At most 255 bytes: printed quickly.
                    let v = Self::long_bytes(b);
                    self.scalar(v);
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.le()?);
                    if n < 0 {
                        return Err(self.malformed("negative LONG4 length"));
                    }
                    let n = self.check_left(n as usize)?;
                    if n > MAX_INT_BYTES {
                        return Err(self.malformed(format!("an integer of {n} bytes: longer than Python prints (sys.int_max_str_digits)")));
                    }
                    let b = self.take(n)?;
                    let v = Self::long_bytes(b);
                    self.scalar(v);
                }
                b'F' => {
                    let t = self.line()?;
                    let f = std::str::from_utf8(t)
                        .ok()
                        .and_then(|t| parse_py_float(t.trim()))
                        .ok_or_else(|| self.malformed("float text"))?;
                    self.scalar(Value::Float(f));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.scalar(Value::Float(v));
                }
                b'S' => {
                    let t = self.line()?.to_vec();
                    let v = self.string_escaped(&t)?;
                    self.scalar(v);
                }
                b'V' => {
                    let t = self.line()?.to_vec();
                    let b = unescape(&t, true).ok_or_else(|| self.malformed("escape"))?;
                    let s = self.text(&b)?;
                    self.scalar(Value::Str(s));
                }
                b'T' | b'U' | 0x8e | b'B' | b'C' | 0x96 => {
                    // Python 2 str (T, U) and bytes (B, C, BINBYTES8, BYTEARRAY8).
                    let n = match op {
                        b'T' => {
                            let n = i32::from_le_bytes(self.le()?);
                            if n < 0 {
                                return Err(self.malformed("negative length"));
                            }
                            self.check_left(n as usize)?
                        }
                        b'B' => self.len_u32()?,
                        0x8e | 0x96 => self.len_u64()?,
                        _ => self.u8()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    // A Python 2 str is text in practice (a py2 client's messages).
                    let v = if matches!(op, b'T' | b'U') {
                        match String::from_utf8(b) {
                            Ok(s) => Value::Str(s),
                            Err(e) => Value::Bytes(e.into_bytes()),
                        }
                    } else {
                        Value::Bytes(b)
                    };
                    self.scalar(v);
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.len_u32()?,
                        0x8d => self.len_u64()?,
                        _ => self.u8()? as usize,
                    };
                    let b = self.take(n)?;
                    let s = match std::str::from_utf8(b) {
                        Ok(s) => s.to_string(),
                        // Python writes lone surrogates with surrogatepass.
                        Err(_) => String::from_utf8_lossy(b).into_owned(),
                    };
                    self.scalar(Value::Str(s));
                }
                b')' => self.push(Node::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.malformed("stack underflow"));
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.add_to_list(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.add_to_list(items)?;
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err(self.malformed("odd number of dict items"));
                    }
                    let kv = items.chunks(2).map(|kv| (kv[0], kv[1])).collect();
                    self.push(Node::Dict(kv));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                0x8f => self.push(Node::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let s = self.top()?;
                    match &mut self.arena[s] {
                        Node::Set(v) => v.extend(items),
                        _ => return Err(self.malformed("ADDITEMS to something not a set")),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                b'p' => {
                    let t = self.line()?;
                    let k = std::str::from_utf8(t)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok())
                        .ok_or_else(|| self.malformed("PUT index"))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.next_memo;
                    self.next_memo += 1;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let t = self.line()?;
                    let k = std::str::from_utf8(t)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok())
                        .ok_or_else(|| self.malformed("GET index"))?;
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_get(k)?;
                }
                _ => return Err(PickleError::Unknown { op, at }),
            }
        }
    }

    /// How often each arena node is referenced from the result: a scalar
    /// referenced once is moved out by [`Machine::build`], not cloned.
    fn refs(&self, top: usize) -> Vec<u32> {
        let mut refs = vec![0u32; self.arena.len()];
        refs[top] += 1;
        for n in &self.arena {
            match n {
                Node::Scalar(_) => {}
                Node::Tuple(v) | Node::List(v) | Node::Set(v) => {
                    v.iter().for_each(|&j| refs[j] = refs[j].saturating_add(1))
                }
                Node::Dict(kv) => kv.iter().for_each(|&(k, v)| {
                    refs[k] = refs[k].saturating_add(1);
                    refs[v] = refs[v].saturating_add(1);
                }),
            }
        }
        refs
    }

    fn build(
        &mut self,
        i: usize,
        depth: usize,
        budget: &mut usize,
        refs: &[u32],
        shared: bool,
    ) -> Result<Value, PickleError> {
        // Reached through a node referenced more than once: it is built again
        // for each reference, so nothing below may be moved out.
        let shared = shared || refs[i] > 1;
        if depth > MAX_DEPTH || *budget == 0 {
            return Err(PickleError::TooBig);
        }
        *budget -= 1;
        let node = match &mut self.arena[i] {
            Node::Scalar(v) if !shared => return Ok(std::mem::replace(v, Value::None)),
            Node::Scalar(v) => return Ok(v.clone()),
            // Containers are taken apart once; a shared one is rebuilt from
            // its (cloned) children each time.
            Node::Tuple(v) => Node::Tuple(v.clone()),
            Node::List(v) => Node::List(v.clone()),
            Node::Set(v) => Node::Set(v.clone()),
            Node::Dict(v) => Node::Dict(v.clone()),
        };
        let many =
            |this: &mut Self, v: &[usize], budget: &mut usize| -> Result<Vec<Value>, PickleError> {
                let mut out = Vec::with_capacity(v.len());
                for &j in v {
                    out.push(this.build(j, depth + 1, budget, refs, shared)?);
                }
                Ok(out)
            };
        Ok(match node {
            Node::Scalar(_) => unreachable!("returned above"),
            Node::Tuple(v) => Value::Tuple(many(self, &v, budget)?),
            Node::List(v) => Value::List(many(self, &v, budget)?),
            Node::Set(v) => Value::Set(many(self, &v, budget)?),
            Node::Dict(kv) => {
                let mut out = Vec::with_capacity(kv.len());
                for (k, v) in kv {
                    let k = self.build(k, depth + 1, budget, refs, shared)?;
                    out.push((k, self.build(v, depth + 1, budget, refs, shared)?));
                }
                Value::Dict(out)
            }
        })
    }
}

/// Python's float text (`repr`), including `inf` and `nan`.
fn parse_py_float(t: &str) -> Option<f64> {
    match t {
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => t.parse().ok(),
    }
}

/// Decimal text of a little-endian two's complement integer.
fn big_decimal(b: &[u8]) -> String {
    let neg = b[b.len() - 1] & 0x80 != 0;
    // Magnitude, little-endian bytes.
    let mut mag: Vec<u8> = b.to_vec();
    if neg {
        let mut carry = 1u16;
        for x in &mut mag {
            let v = (!*x) as u16 + carry;
            *x = v as u8;
            carry = v >> 8;
        }
    }
    // Repeated division by 10^9 of a big-endian base-256 number.
    let mut be: Vec<u32> = mag.iter().rev().map(|&x| x as u32).collect();
    let mut chunks = Vec::new();
    while be.iter().any(|&x| x != 0) {
        let mut rem = 0u64;
        for x in &mut be {
            let cur = (rem << 8) | *x as u64;
            *x = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        chunks.push(rem as u32);
        while be.first() == Some(&0) {
            be.remove(0);
        }
    }
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    match chunks.split_last() {
        None => s.push('0'),
        Some((hi, rest)) => {
            s.push_str(&hi.to_string());
            for c in rest.iter().rev() {
                s.push_str(&format!("{c:09}"));
            }
        }
    }
    s
}

/// Backslash escapes of protocol 0 strings; `unicode` adds `\uXXXX` and
/// `\UXXXXXXXX` (raw-unicode-escape). `None` on a bad escape.
fn unescape(t: &[u8], unicode: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        let c = t[i];
        i += 1;
        if c != b'\\' {
            if unicode && c >= 0x80 {
                // raw-unicode-escape: bytes are Latin-1 code points.
                let mut buf = [0u8; 4];
                out.extend_from_slice(char::from(c).encode_utf8(&mut buf).as_bytes());
            } else {
                out.push(c);
            }
            continue;
        }
        let e = *t.get(i)?;
        i += 1;
        let hex = |n: usize, i: &mut usize| -> Option<u32> {
            let s = std::str::from_utf8(t.get(*i..*i + n)?).ok()?;
            *i += n;
            u32::from_str_radix(s, 16).ok()
        };
        match e {
            b'u' if unicode => {
                let cp = hex(4, &mut i)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(char::from_u32(cp)?.encode_utf8(&mut buf).as_bytes());
            }
            b'U' if unicode => {
                let cp = hex(8, &mut i)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(char::from_u32(cp)?.encode_utf8(&mut buf).as_bytes());
            }
            _ if unicode => {
                out.push(b'\\');
                out.push(e);
            }
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match t.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => out.push(hex(2, &mut i)? as u8),
            _ => {
                out.push(b'\\');
                out.push(e);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::any;

    /// `pickle.dumps({'name': 'app', 'msg': 'hi', 'args': None, 'levelno': 20,
    /// 'created': 1.5, 'ok': True}, 1)` from CPython 3.11.
    const RECORD_P1: &[u8] = b"}q\x00(X\x04\x00\x00\x00nameq\x01X\x03\x00\x00\x00appq\x02X\x03\x00\x00\x00msgq\x03X\x02\x00\x00\x00hiq\x04X\x04\x00\x00\x00argsq\x05NX\x07\x00\x00\x00levelnoq\x06K\x14X\x07\x00\x00\x00createdq\x07G?\xf8\x00\x00\x00\x00\x00\x00X\x02\x00\x00\x00okq\x08I01\nu.";

    #[test]
    fn a_protocol_1_record_dict_decodes() {
        let v = decode(RECORD_P1).unwrap();
        assert_eq!(v.get("name"), Some(&Value::Str("app".into())));
        assert_eq!(v.get("msg"), Some(&Value::Str("hi".into())));
        assert_eq!(v.get("args"), Some(&Value::None));
        assert_eq!(v.get("levelno"), Some(&Value::Int(20)));
        assert_eq!(v.get("created"), Some(&Value::Float(1.5)));
        assert_eq!(v.get("ok"), Some(&Value::Bool(true)));
    }

    #[test]
    fn globals_and_reduce_are_refused_before_anything_is_built() {
        // pickle.dumps of a class whose __reduce__ returns (os.system, ('touch x',)), protocol 0.
        let evil = b"cposix\nsystem\np0\n(Vtouch x\np1\ntp2\nRp3\n.";
        let e = decode(evil).unwrap_err();
        assert!(
            matches!(
                e,
                PickleError::Refused {
                    name: "GLOBAL",
                    at: 0,
                    ..
                }
            ),
            "{e}"
        );
        // Protocol 4: STACK_GLOBAL.
        let evil4 = b"\x80\x04\x95\x1f\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x07touch x\x94\x85\x94R\x94.";
        let e = decode(evil4).unwrap_err();
        assert!(
            matches!(
                e,
                PickleError::Refused {
                    name: "STACK_GLOBAL",
                    ..
                }
            ),
            "{e}"
        );
        for op in [b'R', b'b', b'i', b'o', 0x81, 0x92, b'P'] {
            assert!(matches!(decode(&[op]), Err(PickleError::Refused { .. })));
        }
    }

    #[test]
    fn memo_shares_containers_and_cycles_are_errors() {
        // l = [1]; pickle.dumps([l, l], 2)
        let shared = b"\x80\x02]q\x00(]q\x01K\x01ah\x01e.";
        assert_eq!(
            decode(shared).unwrap(),
            Value::List(vec![
                Value::List(vec![Value::Int(1)]),
                Value::List(vec![Value::Int(1)])
            ])
        );
        // l = []; l.append(l)
        let cyclic = b"\x80\x02]q\x00h\x00a.";
        assert_eq!(decode(cyclic), Err(PickleError::TooBig));
    }

    #[test]
    fn integers_of_every_width() {
        assert_eq!(decode(b"\x80\x02\x8a\x01\xff.").unwrap(), Value::Int(-1));
        // 2**70
        assert_eq!(
            decode(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40.").unwrap(),
            Value::BigInt("1180591620717411303424".into())
        );
        // -(2**70)
        assert_eq!(
            decode(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xc0.").unwrap(),
            Value::BigInt("-1180591620717411303424".into())
        );
        assert_eq!(decode(b"I-7\n.").unwrap(), Value::Int(-7));
        // Found by the fuzzer: leading zeros made invalid JSON numbers.
        assert_eq!(
            decode(b"L0012121504627842660096L\n.").unwrap(),
            Value::BigInt("12121504627842660096".into())
        );
        assert_eq!(
            decode(b"L-000000000000000000000000L\n.").unwrap(),
            Value::Int(0)
        );
        assert_eq!(
            decode(b"L12345678901234567890123L\n.").unwrap(),
            Value::BigInt("12345678901234567890123".into())
        );
    }

    #[test]
    fn lying_lengths_and_truncation_are_errors_not_allocations() {
        assert!(matches!(
            decode(b"X\xff\xff\xff\xffab"),
            Err(PickleError::Truncated(_))
        ));
        assert!(matches!(
            decode(b"\x8d\xff\xff\xff\xff\xff\xff\xff\xffab"),
            Err(PickleError::Truncated(_))
        ));
        assert_eq!(decode(b"N"), Err(PickleError::NoStop));
        assert!(decode(b"").is_err());
    }

    /// A protocol-2 pickler of plain values (what Python writes for them).
    fn pickle(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::None => out.push(b'N'),
            Value::Bool(true) => out.push(0x88),
            Value::Bool(false) => out.push(0x89),
            Value::Int(n) => match i32::try_from(*n) {
                Ok(m) => {
                    out.push(b'J');
                    out.extend_from_slice(&m.to_le_bytes());
                }
                Err(_) => {
                    out.extend_from_slice(&[0x8a, 8]);
                    out.extend_from_slice(&n.to_le_bytes());
                }
            },
            Value::BigInt(s) => {
                out.push(b'L');
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"L\n");
            }
            Value::Float(f) => {
                out.push(b'G');
                out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Str(s) => {
                out.push(b'X');
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(b'B');
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
            Value::List(items) => {
                out.extend_from_slice(b"](");
                items.iter().for_each(|x| pickle(x, out));
                out.push(b'e');
            }
            Value::Tuple(items) => {
                out.push(b'(');
                items.iter().for_each(|x| pickle(x, out));
                out.push(b't');
            }
            Value::Set(items) => {
                out.extend_from_slice(&[0x8f, b'(']);
                items.iter().for_each(|x| pickle(x, out));
                out.push(0x90);
            }
            Value::Dict(kv) => {
                out.extend_from_slice(b"}(");
                for (k, x) in kv {
                    pickle(k, out);
                    pickle(x, out);
                }
                out.push(b'u');
            }
        }
    }

    fn value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::None),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            "-?[1-9][0-9]{19,40}".prop_map(Value::BigInt),
            any::<f64>()
                .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
                .prop_map(Value::Float),
            ".*".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Tuple),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
                proptest::collection::vec((".*".prop_map(Value::Str), inner), 0..6)
                    .prop_map(Value::Dict),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Plain data pickled as Python does comes back equal.
        #[test]
        fn plain_values_round_trip(v in value()) {
            let mut b = vec![0x80, 2];
            pickle(&v, &mut b);
            b.push(b'.');
            proptest::prop_assert_eq!(decode(&b), Ok(v));
        }

        /// Arbitrary bytes, and real pickles with bytes changed, cut or
        /// inserted: a value or an error, never a panic or a hang.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(
            which in 0usize..3,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..8),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let seeds: [&[u8]; 3] = [RECORD_P1, b"\x80\x02]q\x00(]q\x01K\x01ah\x01e.", b"\x80\x02\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@."];
            let mut b = seeds[which].to_vec();
            for (at, byte, kind) in edits {
                let i = at % (b.len() + 1);
                match kind {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ => b.truncate(i.max(1)),
                }
            }
            let _ = decode(&b);
            let _ = decode(&junk);
            if let Ok((_, line)) = crate::collect::python::record_line(&b) {
                proptest::prop_assert!(serde_json::from_slice::<serde_json::Value>(&line).is_ok(), "{}", String::from_utf8_lossy(&line));
            }
        }
    }
}
