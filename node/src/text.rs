//! Small text checks shared by the daemons' configuration parsers and the origin.

/// Line (1-based) of byte `offset` in `text`, for errors that name where a key is.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Checks a vehicle id (VIN): the rules of [`proto::Vin`], so that it is safe as a path
/// segment and a repository name (`director/<vin>`).
pub fn check_vehicle_id(vin: &str) -> Result<(), proto::IdError> {
    proto::Vin::parse(vin).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_vehicle_ids() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
        assert!(check_vehicle_id("WDB9634031L123456").is_ok());
        for bad in ["", "../x", "a b", &"x".repeat(65)] {
            assert!(check_vehicle_id(bad).is_err(), "{bad:?}");
        }
    }
}
