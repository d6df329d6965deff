//! Enrollment tokens: arbitrary text never panics the parser; a token that
//! parses prints back to text that parses to the same token.
#![no_main]

use fpn_gms_client::token::Token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Token::parse(text) {
        let printed = t.encode();
        let again = Token::parse(&printed).expect("a printed token parses");
        assert_eq!(again.encode(), printed);
    }
});
