//! Strings numbered in first-seen order: queries count by these ids while they scan, and
//! each distinct string is built once.

use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct Names {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Names {
    pub(crate) fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        self.names.push(name.to_string());
        let i = (self.names.len() - 1) as u32;
        self.ids.insert(name.to_string(), i);
        i
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}
