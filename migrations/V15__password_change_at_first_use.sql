-- PCI DSS v4.0 requirement 8.3.5: a password set by someone else (an administrator creating
-- the account) is changed by its owner at first use. Until then the account's sessions
-- may only change the password, enrol a second factor, look at themselves and log out.
ALTER TABLE accounts ADD COLUMN password_change_required BOOLEAN NOT NULL DEFAULT false;
