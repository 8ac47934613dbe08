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

use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::rc::Rc;

/// The two output streams.
pub struct Ui {
    /// Where results go (stdout).
    out: Box<dyn Write>,
    /// Where warnings and errors go (stderr).
    err: Box<dyn Write>,
    /// Whether stdout is a terminal, so a progress line may be drawn and
    /// redrawn there (never in pipes or files, where scripts read it).
    progress: bool,
    /// Whether a progress line is on the screen now, to be erased before
    /// anything else is printed.
    progress_shown: bool,
}

impl Ui {
    /// The process's stdout and stderr; progress lines when stdout is a
    /// terminal.
    pub fn stdio() -> Ui {
        let mut ui = Ui::new(io::stdout(), io::stderr());
        ui.progress = io::stdout().is_terminal();
        ui
    }

    /// A [`Ui`] that records what is written, both streams in order, for
    /// [`Ui::replay`] later: work done concurrently keeps its messages until
    /// its turn comes, so they appear in the same order as one after the
    /// other.
    pub fn recording() -> (Ui, Recording) {
        let rec = Recording::default();
        let ui = Ui::new(
            Recorder(rec.clone(), Stream::Out),
            Recorder(rec.clone(), Stream::Err),
        );
        (ui, rec)
    }

    /// Writes what a [`Ui::recording`] recorded, as it was written.
    pub fn replay(&mut self, rec: &Recording) -> io::Result<()> {
        for (stream, text) in rec.0.borrow_mut().drain(..) {
            match stream {
                Stream::Out => self.print(&text)?,
                Stream::Err => self.warn(text),
            }
        }
        Ok(())
    }

    /// Any two writers (tests pass buffers). No progress lines.
    pub fn new(out: impl Write + 'static, err: impl Write + 'static) -> Ui {
        Ui {
            out: Box::new(out),
            err: Box::new(err),
            progress: false,
            progress_shown: false,
        }
    }

    /// Draws `line` as the progress line on stdout, replacing the previous
    /// one; nothing unless stdout is a terminal.
    pub fn progress(&mut self, line: &str) {
        if !self.progress {
            return;
        }
        // \r and "erase to end of line": redraw in place. Best effort: a
        // terminal that went away fails the next real output instead.
        let _ = write!(self.out, "\r\x1b[K{line}");
        let _ = self.out.flush();
        self.progress_shown = true;
    }

    /// Erases the progress line, if one is shown.
    pub fn clear_progress(&mut self) {
        if self.progress_shown {
            let _ = write!(self.out, "\r\x1b[K");
            let _ = self.out.flush();
            self.progress_shown = false;
        }
    }

    /// Writes `text` to stdout as is.
    pub fn print(&mut self, text: &str) -> io::Result<()> {
        self.clear_progress();
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
        self.clear_progress();
        // Nothing sensible to do when stderr itself is gone.
        let _ = self.err.write_all(text.as_bytes());
        let _ = self.err.flush();
    }
}

/// Which stream a recorded write went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

/// What a [`Ui::recording`] was given, in order. Not `Send`: recordings stay
/// on the thread of the command.
#[derive(Clone, Default)]
pub struct Recording(Rc<RefCell<Vec<(Stream, String)>>>);

/// One stream of a recording.
struct Recorder(Recording, Stream);

impl Write for Recorder {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(data).into_owned();
        (self.0).0.borrow_mut().push((self.1, text));
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

    /// As [`capture`], drawing progress lines as on a terminal.
    pub fn capture_with_progress() -> (Ui, Buf, Buf) {
        let (mut ui, out, err) = capture();
        ui.progress = true;
        (ui, out, err)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{capture, capture_with_progress};

    #[test]
    fn progress_only_on_terminals_and_erased_before_output() {
        let (mut ui, out, err) = capture();
        ui.progress("1/10");
        assert_eq!((out.text(), err.text()), (String::new(), String::new()));
        let (mut ui, out, err) = capture_with_progress();
        ui.progress("1/10");
        ui.progress("2/10");
        ui.say("Unit a launched").unwrap();
        assert_eq!(
            out.text(),
            "\r\x1b[K1/10\r\x1b[K2/10\r\x1b[KUnit a launched\n"
        );
        ui.progress("3/10");
        ui.warn("oops");
        assert_eq!(err.text(), "oops\n");
        ui.clear_progress();
        assert!(out.text().ends_with("3/10\r\x1b[K"), "cleared once");
    }

    #[test]
    fn recordings_replay_both_streams_in_order() {
        let (mut rec_ui, rec) = super::Ui::recording();
        rec_ui.say("one").unwrap();
        rec_ui.warn("two");
        rec_ui.say("three").unwrap();
        let (mut ui, out, err) = capture();
        ui.replay(&rec).unwrap();
        assert_eq!(out.text(), "one\nthree\n");
        assert_eq!(err.text(), "two\n");
    }
}
