//! A pre-check of a safetensors header's numbers, before the `safetensors` crate sees them.

/// Guards the `safetensors` crate against headers whose numbers are so large
/// that its size arithmetic overflows: every number in the JSON header
/// (outside strings) must be at most 8 × the file's length, which any valid
/// file satisfies except for zero-element tensors with absurd dimensions.
pub(crate) fn check_header_numbers(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(len) = bytes.get(..8) else {
        return Err("truncated in the header length".into());
    };
    let n = u64::from_le_bytes(len.try_into().unwrap_or([0; 8]));
    let avail = (bytes.len() - 8) as u64;
    if n > avail {
        return Err(format!("header claims {n} bytes, {avail} present"));
    }
    let header = &bytes[8..8 + n as usize];
    let limit = (bytes.len() as u128).saturating_mul(8);
    let (mut in_str, mut escaped) = (false, false);
    let mut num: Option<u128> = None;
    for &c in header {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        if c.is_ascii_digit() {
            let v = num
                .unwrap_or(0)
                .saturating_mul(10)
                .saturating_add(u128::from(c - b'0'));
            if v > limit {
                return Err("a size in the header is larger than the file".into());
            }
            num = Some(v);
        } else {
            num = None;
            in_str = c == b'"';
        }
    }
    Ok(())
}
