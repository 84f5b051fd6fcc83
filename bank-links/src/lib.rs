//! Placeholder until the bank link lands.
