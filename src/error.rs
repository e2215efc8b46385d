//! How errors are shown. Every error type's message describes its own level only (what failed,
//! where); its cause is its `source()`. `Chain` prints an error with every cause, each once,
//! joined by `: ` — the same shape as anyhow's `{:#}`, for typed errors.

use std::error::Error;
use std::fmt;

/// An error and its causes: `cannot write x: No space left on device (os error 28)`.
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write {path}")]
    struct Outer {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn prints_each_cause_once() {
        let e = Outer {
            path: "/x",
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(Chain(&e).to_string(), "cannot write /x: disk full");
        let plain = std::io::Error::other("alone");
        assert_eq!(Chain(&plain).to_string(), "alone");
    }
}
