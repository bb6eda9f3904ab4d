//! Fuzz the address and mailbox parsers: no input panics, and whatever is
//! accepted is safe to write (no control characters), prints back to an
//! address that parses to the same value, and has a consistent ASCII form.

#![no_main]

use herald_mime::{Address, Mailbox};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(a) = Address::parse(input) {
        let printed = a.to_string();
        assert!(!printed.chars().any(|c| c.is_control()), "{printed:?}");
        assert!(printed.len() <= 254 || !a.domain().is_ascii());
        assert!(a.local_part().len() <= 64);
        assert_eq!(Address::parse(&printed).as_ref(), Ok(&a), "reparse {printed:?}");
        match a.to_ascii() {
            Ok(ascii) => {
                assert!(ascii.is_ascii() && !a.needs_smtputf8());
                assert!(Address::parse(&ascii).is_ok(), "ascii form {ascii:?} parses");
            }
            Err(_) => assert!(a.needs_smtputf8()),
        }
    }
    if let Ok(m) = Mailbox::parse(input) {
        if let Some(name) = m.name() {
            assert!(!name.chars().any(|c| c.is_control() && c != '\t'));
        }
        let again = Mailbox::new(m.name(), m.address().clone()).expect("rebuild");
        assert_eq!(again, m);
    }
});
