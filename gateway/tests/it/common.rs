//! The shared harness (`herald-testkit`), bound to the `herald` binary that
//! Cargo built for these tests.

pub(crate) use herald_testkit::*;

/// The `herald` executable under test.
pub(crate) fn herald() -> Herald {
    Herald::at(env!("CARGO_BIN_EXE_herald"))
}
