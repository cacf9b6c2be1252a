//! gRPC status names, as grpc-status documents them: the `code` label of the server's and the
//! load generator's metrics, and the keys of a result's error counts.

use tonic::Code;

/// gRPC status code names, indexed by code number.
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of `code` (`RESOURCE_EXHAUSTED`).
pub fn code_name(code: Code) -> &'static str {
    // tonic's codes are the wire numbers 0..=16, the indices of CODES.
    CODES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_wire_numbers() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
        for (i, name) in CODES.iter().enumerate() {
            assert_eq!(code_name(Code::from(i as i32)), *name);
        }
    }
}
