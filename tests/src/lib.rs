//! Support for black-box tests: finding the private PostgreSQL and Redis, starting binaries.
