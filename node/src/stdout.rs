//! A command's answer on standard output, and a reader that went away.
//!
//! `println!` panics when standard output is a pipe its reader closed (`origin campaign status
//! | head`): Rust ignores SIGPIPE, so the write fails with `BrokenPipe`. The binaries print
//! with [`say!`](crate::say) instead, which returns the error, and end quietly when
//! [`is_closed_pipe`] says that is what stopped them, as the shell's own tools do.

/// Writes a line to standard output as `println!` does, returning the write's
/// `std::io::Result` instead of panicking.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Whether `error`, or an error it was caused by, is a write to a pipe whose reader closed it.
pub fn is_closed_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("printing the answer")]
    struct Printing(#[source] std::io::Error);

    #[test]
    fn a_closed_pipe_is_found_under_the_errors_it_caused() {
        let closed = Printing(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_closed_pipe(&closed));
        let full = Printing(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!is_closed_pipe(&full));
    }
}
