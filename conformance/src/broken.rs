//! Deliberately broken coordinators, to show that the suite catches them.
