//! Helpers shared by the library's test files.
#![allow(dead_code)]

/// The error and its sources, as `anyhow`'s `{:#}` prints them: the
/// library's errors say each cause once, in `source()`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
