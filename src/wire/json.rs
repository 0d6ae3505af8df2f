//! The envelope's JSON, by hand on the hot path.
//!
//! A profile of a bus message (`benches/bus_cpu.rs` under callgrind) put
//! 43% of the hubs' instructions in `serde_json`'s decode of the envelope
//! and 17% in its encode, most of it escaping and unescaping the quotes of
//! JSON event data. [`encode`] writes the same bytes `serde_json` writes
//! (same field order, same escapes); [`decode`] reads the envelopes hubs
//! write and answers `None` for anything else (an unknown field, a
//! `null`, a duplicate, a number that is not a plain integer, a `\u`
//! surrogate; whitespace is fine), which then goes to
//! `serde_json`: what is accepted or refused, and how it reads, stays
//! `serde_json`'s. Both are checked against `serde_json` by property
//! tests.

use std::borrow::Cow;

use super::Envelope;

/// For each byte, the letter of its escape (`u` for `\u00XX`), or 0 if
/// it is written as is: the table `serde_json` escapes by.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `run`: byte by byte when short (JSON event data has a quote
/// every few bytes, and a copy call per run cost more than its bytes), in
/// one copy when long.
fn push_run(out: &mut Vec<u8>, run: &[u8]) {
    if run.len() < 16 {
        for &b in run {
            out.push(b);
        }
    } else {
        out.extend_from_slice(run);
    }
}

/// The index of the first byte of `rest` that `ESCAPE` lists (a quote,
/// a backslash, a control character), or its length. The first bytes are
/// tested one by one (JSON data has a quote every few bytes); a longer run
/// is searched with `memchr` and checked for control characters in bulk.
fn next_special(rest: &[u8]) -> usize {
    let head = rest.len().min(16);
    if let Some(at) = rest[..head]
        .iter()
        .position(|&b| ESCAPE[usize::from(b)] != 0)
    {
        return at;
    }
    let tail = &rest[head..];
    let at = memchr::memchr2(b'"', b'\\', tail).unwrap_or(tail.len());
    let run = &tail[..at];
    // A loop the compiler turns into vector instructions; the position
    // only when there is one.
    if run.iter().fold(false, |seen, &b| seen | (b < 0x20)) {
        if let Some(control) = run.iter().position(|&b| b < 0x20) {
            return head + control;
        }
    }
    head + at
}

/// Appends the escape of byte `b` (one `ESCAPE` lists).
fn push_escape(out: &mut Vec<u8>, b: u8) {
    match ESCAPE[usize::from(b)] {
        0 => out.push(b),
        b'u' => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        letter => {
            out.push(b'\\');
            out.push(letter);
        }
    }
}

/// Appends `s` as a JSON string, escaped exactly as `serde_json` does.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut rest = s.as_bytes();
    loop {
        let at = next_special(rest);
        push_run(out, &rest[..at]);
        match rest.get(at) {
            Some(&b) => push_escape(out, b),
            None => break,
        }
        rest = &rest[at + 1..];
    }
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The envelope as `serde_json::to_vec` writes it (fields in declaration
/// order, `None` and empty `data` left out).
pub(super) fn encode(env: &Envelope<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"v\":");
    push_u64(out, env.v);
    let string = |out: &mut Vec<u8>, key: &[u8], value: Option<&str>| {
        if let Some(value) = value {
            out.extend_from_slice(key);
            push_str(out, value);
        }
    };
    string(out, b",\"origin\":", env.origin.as_deref());
    string(out, b",\"msg\":", env.msg.as_deref());
    if let Some(ts) = env.ts_us {
        out.extend_from_slice(b",\"ts_us\":");
        push_u64(out, ts);
    }
    string(out, b",\"conn\":", env.conn.as_deref());
    string(out, b",\"event\":", env.event.as_deref());
    string(out, b",\"id\":", env.id.as_deref());
    if let Some(retry) = env.retry {
        out.extend_from_slice(b",\"retry\":");
        push_u64(out, retry);
    }
    let data = Some(env.data.as_ref()).filter(|d| !d.is_empty());
    string(out, b",\"data\":", data);
    string(out, b",\"pos\":", env.pos.as_deref());
    string(out, b",\"epoch\":", env.epoch.as_deref());
    out.push(b'}');
}

/// A cursor over one message.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next non-blank byte, consumed.
    fn next(&mut self) -> Option<u8> {
        self.skip_ws();
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// A string whose opening quote was just read: borrowed when it has no
    /// escape. `None` for a control character, an invalid escape, a `\u`
    /// surrogate, invalid UTF-8 or a missing end.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let bytes = self.bytes;
        let start = self.at;
        let mut i = start;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let at = i + next_special(&bytes[i..]);
            let run = &bytes[i..at];
            match *bytes.get(at)? {
                b'"' => {
                    self.at = at + 1;
                    return match owned {
                        None => std::str::from_utf8(&bytes[start..at])
                            .ok()
                            .map(Cow::Borrowed),
                        Some(mut buf) => {
                            push_run(&mut buf, run);
                            String::from_utf8(buf).ok().map(Cow::Owned)
                        }
                    };
                }
                b'\\' => {
                    // Escaped: unescaped run by run into room for the rest.
                    let buf = owned.get_or_insert_with(|| Vec::with_capacity(bytes.len() - start));
                    push_run(buf, run);
                    i = at + unescape(&bytes[at..], buf)?;
                }
                _ => return None,
            }
        }
    }

    /// A plain non-negative integer (no sign, fraction, exponent or
    /// leading zero) that fits a `u64`.
    fn integer(&mut self) -> Option<u64> {
        self.skip_ws();
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(&b) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.bytes[start] == b'0';
        match self.bytes.get(self.at) {
            Some(b'.' | b'e' | b'E') => None,
            _ if digits == 0 || leading_zero => None,
            _ => Some(n),
        }
    }
}

/// The envelope in `bytes`, when it has the plain shape hubs write; `None`
/// sends the message to `serde_json` (see the module docs).
pub(super) fn decode(bytes: &[u8]) -> Option<Envelope<'_>> {
    let mut r = Reader { bytes, at: 0 };
    let mut env = Envelope::default();
    let mut seen = 0u16;
    if r.next()? != b'{' {
        return None;
    }
    let mut first = true;
    loop {
        match r.next()? {
            b'}' if first => {}
            b'"' => {
                let key = r.string()?;
                if r.next()? != b':' {
                    return None;
                }
                let bit = field(&mut env, &key, &mut r)?;
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                match r.next()? {
                    b',' => {
                        first = false;
                        continue;
                    }
                    b'}' => {}
                    _ => return None,
                }
            }
            _ => return None,
        }
        break;
    }
    r.skip_ws();
    // `v` is required.
    (r.at == bytes.len() && seen & 1 != 0).then_some(env)
}

/// The escape at the start of `at` (a backslash first) unescaped onto
/// `out`; its length in the input.
fn unescape(at: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let unescaped = match *at.get(1)? {
        b'"' => b'"',
        b'\\' => b'\\',
        b'/' => b'/',
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'b' => 0x08,
        b'f' => 0x0c,
        // `\uXXXX` outside the surrogates (a pair is left to serde_json).
        b'u' => {
            let hex = std::str::from_utf8(at.get(2..6)?).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
            out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes());
            return Some(6);
        }
        _ => return None,
    };
    out.push(unescaped);
    Some(2)
}

/// A string value: its opening quote, then [`Reader::string`].
fn string_value<'a>(r: &mut Reader<'a>) -> Option<Cow<'a, str>> {
    if r.next()? != b'"' {
        return None;
    }
    r.string()
}

/// Reads the value of `key` into `env`; its bit in the set of fields seen.
fn field<'a>(env: &mut Envelope<'a>, key: &str, r: &mut Reader<'a>) -> Option<u16> {
    let (bit, slot) = match key {
        "v" => {
            env.v = r.integer()?;
            return Some(1);
        }
        "ts_us" => {
            env.ts_us = Some(r.integer()?);
            return Some(1 << 9);
        }
        "retry" => {
            env.retry = Some(r.integer()?);
            return Some(1 << 10);
        }
        "data" => {
            env.data = string_value(r)?;
            return Some(1 << 8);
        }
        "origin" => (1, &mut env.origin),
        "msg" => (2, &mut env.msg),
        "conn" => (3, &mut env.conn),
        "event" => (4, &mut env.event),
        "id" => (5, &mut env.id),
        "pos" => (6, &mut env.pos),
        "epoch" => (7, &mut env.epoch),
        _ => return None,
    };
    *slot = Some(string_value(r)?);
    Some(1 << bit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde_decode(bytes: &[u8]) -> Option<Envelope<'_>> {
        serde_json::from_slice(bytes).ok()
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9 ]{0,12}",
            "[\"\\\\/{}:,\\n\\r\\t\\x08\\x0c\\x00-\\x1f\\x7fé€😀a-z]{0,24}",
            any::<String>(),
        ]
    }

    fn envelope() -> impl Strategy<Value = Envelope<'static>> {
        let opt = || proptest::option::of(text().prop_map(Cow::Owned));
        (
            (
                any::<u64>(),
                opt(),
                opt(),
                proptest::option::of(any::<u64>()),
            ),
            (opt(), opt(), opt(), proptest::option::of(any::<u64>())),
            (text(), opt(), opt()),
        )
            .prop_map(
                |((v, origin, msg, ts_us), (conn, event, id, retry), (data, pos, epoch))| {
                    Envelope {
                        v,
                        origin,
                        msg,
                        ts_us,
                        conn,
                        event,
                        id,
                        retry,
                        data: Cow::Owned(data),
                        pos,
                        epoch,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn encodes_what_serde_json_encodes(env in envelope()) {
            let mut ours = Vec::new();
            encode(&env, &mut ours);
            prop_assert_eq!(ours, serde_json::to_vec(&env).unwrap());
        }

        #[test]
        fn decodes_its_own_encoding_as_serde_json_does(env in envelope()) {
            let mut bytes = Vec::new();
            encode(&env, &mut bytes);
            let fast = decode(&bytes);
            prop_assert!(fast.is_some(), "{:?}", String::from_utf8_lossy(&bytes));
            prop_assert_eq!(fast, serde_decode(&bytes));
        }

        #[test]
        fn whatever_it_reads_reads_as_serde_json_reads_it(
            env in envelope(),
            cut in any::<prop::sample::Index>(),
            insert in prop_oneof![
                Just(&b""[..]), Just(&b" "[..]), Just(&b"\""[..]), Just(&b"\\"[..]),
                Just(&b","[..]), Just(&b"}"[..]), Just(&b"\\u0041"[..]), Just(&b"0"[..]),
                Just(&b"\xff"[..]), Just(&b"\x01"[..]), Just(&b"null"[..]), Just(&b":"[..]),
            ],
        ) {
            let mut bytes = Vec::new();
            encode(&env, &mut bytes);
            let at = cut.index(bytes.len() + 1);
            bytes.splice(at..at, insert.iter().copied());
            if let Some(fast) = decode(&bytes) {
                prop_assert_eq!(Some(fast), serde_decode(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn hands_other_shapes_to_serde_json() {
        for other in [
            &br#"{"v":1,"data":"\ud83d\ude00"}"#[..],
            br#"{"v":1,"data":"\u00g1"}"#,
            br#"{"v":1,"extra":[1]}"#,
            br#"{"v":1,"v":1}"#,
            br#"{"v":1.0}"#,
            br#"{"v":01}"#,
            br#"{"v":-1}"#,
            br#"{"v":1,"origin":null}"#,
            br#"{"data":"x"}"#,
            br#"{"v":1} x"#,
            b"{\"v\":1,\"data\":\"\x01\"}",
            b"{\"v\":1,\"data\":\"\xff\"}",
            br#"{"v":1,}"#,
            br#"{}"#,
            b"",
        ] {
            assert_eq!(decode(other), None, "{:?}", String::from_utf8_lossy(other));
        }
        let spaced = decode(b" { \"v\" : 1 , \"data\" : \"a\\\"b\" } ").unwrap();
        assert_eq!((spaced.v, spaced.data.as_ref()), (1, "a\"b"));
        assert!(matches!(
            decode(br#"{"v":1,"data":"ab"}"#).unwrap().data,
            Cow::Borrowed("ab")
        ));
    }
}
