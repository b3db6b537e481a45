//! The one error path: `tcptrace: <message>` and an exit code.
use std::{
    fmt,
    io::{self, Write},
    process::ExitCode,
};

/// A line on stderr. Unlike `eprintln!`, a closed stderr is not a panic.
pub fn write_note(args: fmt::Arguments) {
    let _ = writeln!(io::stderr(), "{args}");
}

/// `eprintln!` that cannot panic.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::error::write_note(format_args!($($arg)*))
    };
}
pub(crate) use note;

/// Bad command-line input (exit code 2, like clap's own errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// Prints the error as one line and picks the exit code. A closed stdout
/// (`tcptrace | head`) is not an error: exit 0 quietly.
pub fn report(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    let message = format!("{err:#}").replace('\n', " ");
    note!("tcptrace: {message}");
    if err.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn broken_pipe_is_detected_through_context() {
        let err = Err::<(), _>(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("writing events")
            .unwrap_err();
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
