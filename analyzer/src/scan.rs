//! Byte scanning shared by the built-in parser and compiled formats: finding
//! the few-byte literals between fields. (Its own module so that `parse` and
//! `format` both use it without importing each other.)

/// Where literal `lit` first occurs in `hay`. Literals between fields are a
/// few bytes long: a `memchr` for the first byte and a compare beat building
/// a substring searcher per call.
#[inline]
pub(crate) fn find_lit(hay: &[u8], lit: &[u8]) -> Option<usize> {
    let (&first, tail) = lit.split_first()?;
    let mut j = 0;
    while let Some(n) = memchr::memchr(first, &hay[j..]) {
        let at = j + n;
        if starts_with(&hay[at + 1..], tail) {
            return Some(at);
        }
        j = at + 1;
    }
    None
}

/// `hay.starts_with(lit)` for the few-byte literals of a format, without a
/// `memcmp` call.
#[inline]
pub(crate) fn starts_with(hay: &[u8], lit: &[u8]) -> bool {
    hay.len() >= lit.len() && hay.iter().zip(lit).all(|(a, b)| a == b)
}
