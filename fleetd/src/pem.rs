//! Reading the PEM files named by TLS options (the fleet API client's and
//! the etcd client's), so both refuse the same files for the same reasons.
//! Each caller wraps [`PemError`] in its own error, naming the file.

use std::io;
use std::path::Path;

/// Why a PEM file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PemError {
    /// The file cannot be read; shown as the I/O error alone.
    #[error(transparent)]
    Read(#[from] io::Error),
    /// The file holds no `-----BEGIN ` line, so no PEM block at all.
    #[error("no PEM data in it")]
    NoPem,
}

/// The bytes of the PEM file at `path`, which must hold at least the start
/// of one PEM block (what the blocks are is the caller's to check).
pub(crate) fn read_pem(path: &Path) -> Result<Vec<u8>, PemError> {
    let pem = std::fs::read(path)?;
    if !pem.windows(BEGIN.len()).any(|w| w == BEGIN) {
        return Err(PemError::NoPem);
    }
    Ok(pem)
}

/// What starts every PEM block.
const BEGIN: &[u8] = b"-----BEGIN ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pem_and_refuses_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.pem");
        let text = b"junk\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&good, text).expect("write");
        assert_eq!(read_pem(&good).expect("pem"), text);

        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, b"not pem\n").expect("write");
        let err = read_pem(&bad).expect_err("no PEM");
        assert!(matches!(err, PemError::NoPem));
        assert_eq!(err.to_string(), "no PEM data in it");

        let missing = dir.path().join("missing.pem");
        let err = read_pem(&missing).expect_err("missing");
        let io = std::fs::read(&missing).expect_err("missing");
        assert_eq!(err.to_string(), io.to_string());
    }
}
