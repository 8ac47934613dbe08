//! Messages for the user: what fleetctl prints on stdout and stderr.
//!
//! These are not log lines (see STYLE.md): their wording is part of the
//! interface, kept from the original. Every command writes through a [`Ui`]
//! so tests can capture both streams.
//!
//! Writing to stdout can fail (a closed pipe, as in `fleetctl list-units |
//! head -1`); that error is returned so the command stops, and `main` exits
//! quietly on a broken pipe. Writing to stderr cannot usefully fail: errors
//! there are ignored.

use std::io::{self, Write};

/// The two output streams.
pub struct Ui {
    /// Where results go (stdout).
    out: Box<dyn Write>,
    /// Where warnings and errors go (stderr).
    err: Box<dyn Write>,
}

impl Ui {
    /// The process's stdout and stderr.
    pub fn stdio() -> Ui {
        Ui::new(io::stdout(), io::stderr())
    }

    /// Any two writers (tests pass buffers).
    pub fn new(out: impl Write + 'static, err: impl Write + 'static) -> Ui {
        Ui {
            out: Box::new(out),
            err: Box::new(err),
        }
    }

    /// Writes `text` to stdout as is.
    pub fn print(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }

    /// Writes a line to stdout (the original's `stdout()` helper: a newline
    /// is added unless the text ends in one).
    pub fn say(&mut self, line: impl AsRef<str>) -> io::Result<()> {
        let line = line.as_ref();
        if line.ends_with('\n') {
            self.print(line)
        } else {
            self.print(&format!("{line}\n"))
        }
    }

    /// Writes a line to stderr (the original's `stderr()` helper).
    pub fn warn(&mut self, line: impl AsRef<str>) {
        let line = line.as_ref();
        let text = if line.ends_with('\n') {
            line.to_owned()
        } else {
            format!("{line}\n")
        };
        // Nothing sensible to do when stderr itself is gone.
        let _ = self.err.write_all(text.as_bytes());
        let _ = self.err.flush();
    }
}

#[cfg(test)]
pub mod testing {
    //! A [`Ui`] whose output tests can read back.

    use std::cell::RefCell;
    use std::io::{self, Write};
    use std::rc::Rc;

    use super::Ui;

    /// A shared, growable buffer.
    #[derive(Clone, Default)]
    pub struct Buf(Rc<RefCell<Vec<u8>>>);

    impl Buf {
        /// Everything written so far.
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.borrow()).into_owned()
        }
    }

    impl Write for Buf {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A [`Ui`] writing into two buffers, returned alongside.
    pub fn capture() -> (Ui, Buf, Buf) {
        let (out, err) = (Buf::default(), Buf::default());
        (Ui::new(out.clone(), err.clone()), out, err)
    }
}
