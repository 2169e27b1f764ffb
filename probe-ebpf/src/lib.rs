// Present so the agent can depend on this crate from its build script (rebuild triggers);
// the programs are in the binary target.
#![no_std]
