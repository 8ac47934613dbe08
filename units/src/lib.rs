//! fleet's unit model: the pure, synchronous core every other crate builds on.
//!
//! A fleet unit is a name plus a systemd unit file. This crate parses unit
//! files exactly as the original fleet did (go-systemd's `unit.Deserialize`),
//! writes the canonical text that fleet stores and hashes, validates unit
//! names, handles templates and instances, and evaluates the `[X-Fleet]`
//! scheduling options with their combination rules. Compatibility is the
//! point: canonical text and SHA-1 hashes are byte-identical with fleet v1.0,
//! and error messages the API returns are the original's.
//!
//! There is no I/O and no async here: callers hand in text, names and
//! options, and get values or typed errors back.
//!
//! # Layout
//!
//! * `file`: [`UnitOption`], [`UnitFile`] (parse, canonical text, hash,
//!   lookups) and [`ParseError`].
//! * `line`: the normal form of names and values, and [`OptionProblem`],
//!   why an option cannot be written as unit-file lines that read back the
//!   same (so that no stored unit hashes differently once on disk).
//! * `hash`: [`UnitHash`], the SHA-1 content address, with its hex and
//!   array ([`hash_array`]) serde forms.
//! * `name`: [`UnitName`] validation, templates and instances,
//!   [`mangle_name`], [`append_default_type`] and [`is_agent_suffix`].
//! * `xfleet`: [`Requirements`] from the `[X-Fleet]` section,
//!   [`validate_options`] and [`RequirementsError`].
//! * `glob`: [`glob_match`], a port of Go's `path.Match` used by
//!   `Conflicts` and `Replaces`.
//! * `escape`: [`decode_hex_escapes`], for text with `%XX`-style byte
//!   escapes (URLs, systemd's D-Bus object paths).
//! * `quote`: [`go_quote`] and [`go_quote_rune`], Go's `%q` quoting, for
//!   messages (here and in fleetd and fleetctl) that the original formatted
//!   that way.
//!
//! ```
//! use units::{Requirements, UnitFile, UnitName};
//!
//! let name: UnitName = "web@1.service".parse()?;
//! let file = UnitFile::parse(
//!     "[Service]\nExecStart=/usr/bin/web\n\n[X-Fleet]\nConflicts=%p@*.service\n",
//! )?;
//! assert_eq!(file.hash().short(), "569ddfd");
//! let reqs = Requirements::from_unit(&name, &file)?;
//! assert!(reqs.conflicts_with("web@2.service"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod escape;
mod file;
mod glob;
mod hash;
mod line;
mod name;
mod quote;
mod xfleet;

pub use escape::decode_hex_escapes;
pub use file::{LINE_MAX, ParseError, ParseErrorKind, UnitFile, UnitOption};
pub use glob::glob_match;
pub use hash::{HashError, UnitHash, array as hash_array};
pub use line::{OptionProblem, Part};
pub use name::{
    NameError, UNIT_NAME_MAX, UnitName, append_default_type, is_agent_suffix, mangle_name,
};
pub use quote::{go_quote, go_quote_rune};
pub use xfleet::{Requirements, RequirementsError, X_FLEET_SECTION, validate_options};

#[cfg(test)]
mod props;
