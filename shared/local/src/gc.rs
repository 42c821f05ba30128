//! What `studio gc` removes, and when.
