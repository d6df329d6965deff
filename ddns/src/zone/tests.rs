//! Zone logic, called directly.
