//! The lines a krpc binary prints when it fails: a bad flag (one line, exit status 2) and an
//! error with its causes (one line, each cause once).

/// The one-line error every krpc command line prints for a bad flag: `tool: message (see
/// --help)`, exit status 2. Help and version go to stdout with status 0. A message that clap
/// spreads over several lines ("required arguments were not provided:" and the list) is
/// joined into the one line.
pub fn usage_error(tool: &str, e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        print!("{e}");
        return std::process::ExitCode::SUCCESS;
    }
    let rendered = e.to_string();
    let mut lines = rendered.lines();
    let mut line = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    if line.ends_with(':') {
        let details: Vec<&str> = lines
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect();
        line.push(' ');
        line.push_str(&details.join(", "));
    }
    eprintln!("{tool}: {line} (see --help)");
    std::process::ExitCode::from(2)
}

/// An error and its causes on one line, `a: b: c`, as every krpc binary prints it. A cause
/// whose message repeats the one before is skipped: tonic's connect-error wrapper displays its
/// inner error and also returns it as its source, which would print the same text twice.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut source = e.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if message != last {
            out.push_str(": ");
            out.push_str(&message);
        }
        last = message;
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn repeated_causes_print_once() {
        let inner = E("invalid peer certificate", None);
        let handshake = E("TLS handshake failed", Some(Box::new(inner)));
        // tonic's wrapper: same text as its source.
        let wrapper = E("TLS handshake failed", Some(Box::new(handshake)));
        let top = E("cannot connect", Some(Box::new(wrapper)));
        assert_eq!(
            error_chain(&top),
            "cannot connect: TLS handshake failed: invalid peer certificate"
        );
    }
}
