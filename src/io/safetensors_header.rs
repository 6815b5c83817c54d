//! Names the tensor whose header entry lies about its size: the `safetensors` crate refuses
//! such a file with "invalid shape, data type, or offset for tensor" but does not say which
//! tensor, and wgrad's errors name it. Runs only after the crate refused the file, so it
//! reads the header leniently and gives up (`None`) on anything it does not understand.

/// A JSON value, as far as a safetensors header needs (numbers are non-negative integers).
enum Json {
    Str(String),
    Num(u128),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
    Other,
}

/// Nesting deeper than any valid header, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 8;

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.skip_ws();
        (self.s.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// A string's raw text between its quotes (escapes left as written: only for messages).
    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let start = self.i;
        while *self.s.get(self.i)? != b'"' {
            self.i += if self.s[self.i] == b'\\' { 2 } else { 1 };
        }
        self.i += 1;
        Some(String::from_utf8_lossy(self.s.get(start..self.i - 1)?).into_owned())
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        self.skip_ws();
        if depth > MAX_DEPTH {
            return None;
        }
        match *self.s.get(self.i)? {
            b'"' => self.string().map(Json::Str),
            b'[' | b'{' => {
                let obj = self.s[self.i] == b'{';
                self.i += 1;
                let (mut arr, mut fields) = (Vec::new(), Vec::new());
                let close = if obj { b'}' } else { b']' };
                if self.eat(close).is_none() {
                    loop {
                        if obj {
                            let k = self.string()?;
                            self.eat(b':')?;
                            fields.push((k, self.value(depth + 1)?));
                        } else {
                            arr.push(self.value(depth + 1)?);
                        }
                        if self.eat(close).is_some() {
                            break;
                        }
                        self.eat(b',')?;
                    }
                }
                Some(if obj {
                    Json::Obj(fields)
                } else {
                    Json::Arr(arr)
                })
            }
            c if c.is_ascii_digit() => {
                let mut n: u128 = 0;
                while let Some(d) = self.s.get(self.i).filter(|d| d.is_ascii_digit()) {
                    n = n.saturating_mul(10).saturating_add(u128::from(d - b'0'));
                    self.i += 1;
                }
                Some(Json::Num(n))
            }
            _ => {
                // true, false, null, negative or fractional numbers: skip to the next delimiter.
                while !matches!(self.s.get(self.i), None | Some(b',' | b']' | b'}')) {
                    self.i += 1;
                }
                Some(Json::Other)
            }
        }
    }
}

/// Bits per element of the dtypes wgrad knows by name.
fn dtype_bits(name: &str) -> Option<u128> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// The first tensor whose data_offsets span differs from what its dtype and shape need, with
/// a sentence saying so, e.g. `tensor "w": F16 shape [3] needs 6 bytes, data_offsets span 4`.
pub(crate) fn lying_tensor(header: &[u8]) -> Option<String> {
    let Json::Obj(tensors) = (Reader { s: header, i: 0 }).value(0)? else {
        return None;
    };
    for (name, entry) in &tensors {
        let Json::Obj(fields) = entry else { continue };
        let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v);
        let (Some(Json::Str(dtype)), Some(Json::Arr(shape)), Some(Json::Arr(offsets))) =
            (field("dtype"), field("shape"), field("data_offsets"))
        else {
            continue;
        };
        let dims: Vec<u128> = shape
            .iter()
            .map(|d| match d {
                Json::Num(n) => Some(*n),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let (Some(bits), [Json::Num(s), Json::Num(e)]) = (dtype_bits(dtype), &offsets[..]) else {
            continue;
        };
        let need = dims
            .iter()
            .try_fold(bits, |a, &d| a.checked_mul(d))
            .map(|b| b / 8);
        let span = e.checked_sub(*s);
        if need != span {
            let need = need.map_or("more than u128".into(), |n| n.to_string());
            let span = span.map_or(format!("{s}..{e}, backwards"), |n| n.to_string());
            return Some(format!(
                "tensor \"{name}\": {dtype} shape {dims:?} needs {need} bytes, data_offsets span {span}"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::lying_tensor;

    #[test]
    fn names_the_first_tensor_whose_size_disagrees() {
        let h = br#"{"__metadata__":{"k":"v"},"a":{"shape":[2],"dtype":"F32","data_offsets":[0,8]},
            "b\"c":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,18]}}"#;
        assert_eq!(
            lying_tensor(h).as_deref(),
            Some(r#"tensor "b\"c": BF16 shape [2, 3] needs 12 bytes, data_offsets span 10"#)
        );
        let backwards = br#"{"a":{"dtype":"F16","shape":[],"data_offsets":[4,2]}}"#;
        assert!(lying_tensor(backwards).is_some_and(|m| m.contains("4..2, backwards")));
    }

    #[test]
    fn gives_up_quietly_on_what_it_does_not_understand() {
        let honest = br#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}}"#;
        let deep = [b"[".repeat(100_000), b"]".repeat(100_000)].concat();
        for h in [
            &honest[..],
            b"",
            b"{",
            b"{\"a\":",
            b"[1,2]",
            b"{\"a\":{\"dtype\":\"F4\"}}",
            &deep,
        ] {
            assert_eq!(lying_tensor(h), None, "{}", String::from_utf8_lossy(h));
        }
    }
}
