//! One way to show an error with its causes: `a: b: c`, on one line, for log
//! fields, reports and messages.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, joined by `": "`.
pub struct ErrorChain<'a>(pub &'a dyn Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// [`ErrorChain`] as a string.
pub fn error_chain(error: &dyn Error) -> String {
    ErrorChain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn joins_every_cause() {
        let e = Layer(
            "a",
            Some(Box::new(Layer("b", Some(Box::new(Layer("c", None)))))),
        );
        assert_eq!(error_chain(&e), "a: b: c");
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
        assert_eq!(format!("[{}]", ErrorChain(&e)), "[a: b: c]");
    }
}
