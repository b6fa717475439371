//! Empty: the interop test lives in tests/interop.rs.
