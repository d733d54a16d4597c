//! The model's parameters by name, in nanoGPT's layout. One struct serves every per-parameter
//! thing: the tensors' specs, their GPU buffers, their gradients, AdamW's moments, host values.

use crate::model::GptConfig;

/// One transformer block's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Block<T> {
    pub ln_1: T,
    pub c_attn: T,
    /// `attn.c_proj`
    pub c_proj: T,
    pub ln_2: T,
    pub c_fc: T,
    /// `mlp.c_proj`
    pub mlp_proj: T,
}

/// Every parameter: the token and position tables, the blocks, the final LayerNorm, and an
/// output head of its own when untied (tied, the head is `wte`).
#[derive(Clone, Debug, PartialEq)]
pub struct Params<T> {
    pub wte: T,
    pub wpe: T,
    pub h: Vec<Block<T>>,
    pub ln_f: T,
    pub lm_head: Option<T>,
}

impl<T> Block<T> {
    fn each(&self) -> [&T; 6] {
        [
            &self.ln_1,
            &self.c_attn,
            &self.c_proj,
            &self.ln_2,
            &self.c_fc,
            &self.mlp_proj,
        ]
    }

    fn from_each(mut next: impl FnMut() -> T) -> Block<T> {
        Block {
            ln_1: next(),
            c_attn: next(),
            c_proj: next(),
            ln_2: next(),
            c_fc: next(),
            mlp_proj: next(),
        }
    }
}

impl<T> Params<T> {
    /// Every tensor in nanoGPT's order: wte, wpe, the blocks, ln_f, lm_head.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        [&self.wte, &self.wpe]
            .into_iter()
            .chain(self.h.iter().flat_map(|b| b.each()))
            .chain(std::iter::once(&self.ln_f))
            .chain(self.lm_head.as_ref())
    }

    pub fn len(&self) -> usize {
        3 + 6 * self.h.len() + self.lm_head.is_some() as usize
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The same layout with `f` applied to every tensor, in [`Params::iter`] order.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Params<U> {
        let wte = f(&self.wte);
        let wpe = f(&self.wpe);
        let h = self
            .h
            .iter()
            .map(|b| {
                let mut it = b.each().into_iter();
                Block::from_each(|| f(it.next().expect("six tensors per block")))
            })
            .collect();
        let ln_f = f(&self.ln_f);
        let lm_head = self.lm_head.as_ref().map(f);
        Params {
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
        }
    }

    /// [`Params::map`] that can fail; stops at the first error.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(&T) -> Result<U, E>) -> Result<Params<U>, E> {
        let mut out = Vec::with_capacity(self.len());
        for t in self.iter() {
            out.push(f(t)?);
        }
        let mut it = out.into_iter();
        Ok(self.map(|_| it.next().expect("one value per tensor")))
    }

    /// The output head: `lm_head` when untied, else `wte`.
    pub fn head(&self) -> &T {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }
}

impl<T> Params<T> {
    /// A layout from values in [`Params::iter`] order; `None` when the count is wrong.
    pub fn from_vec(layout: &Params<impl Sized>, values: Vec<T>) -> Option<Params<T>> {
        if values.len() != layout.len() {
            return None;
        }
        let mut it = values.into_iter();
        let mut next = || it.next().expect("counted");
        let wte = next();
        let wpe = next();
        let h = (0..layout.h.len())
            .map(|_| Block::from_each(&mut next))
            .collect();
        let ln_f = next();
        let lm_head = layout.lm_head.as_ref().map(|_| next());
        Some(Params {
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
        })
    }
}

/// One parameter tensor, under nanoGPT's name.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Init standard deviation; 0 means "ones" (LayerNorm weights).
    pub init_std: f32,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Weight decay applies to 2-D tensors (matmul weights, wte, wpe, lm_head) only.
    pub fn decays(&self) -> bool {
        self.shape.len() == 2
    }
}

/// The specs of every parameter: names, shapes and nanoGPT's initialisation (N(0, 0.02),
/// residual projections N(0, 0.02/√(2·n_layer)), LayerNorm weights 1).
pub fn specs(cfg: &GptConfig) -> Params<ParamSpec> {
    let c = cfg.n_embd;
    let proj_std = 0.02 / (2.0 * cfg.n_layer as f32).sqrt();
    let p = |name: String, shape: Vec<usize>, init_std: f32| ParamSpec {
        name,
        shape,
        init_std,
    };
    Params {
        wte: p(
            "transformer.wte.weight".into(),
            vec![cfg.vocab_size, c],
            0.02,
        ),
        wpe: p(
            "transformer.wpe.weight".into(),
            vec![cfg.block_size, c],
            0.02,
        ),
        h: (0..cfg.n_layer)
            .map(|i| {
                let h = format!("transformer.h.{i}");
                Block {
                    ln_1: p(format!("{h}.ln_1.weight"), vec![c], 0.0),
                    c_attn: p(format!("{h}.attn.c_attn.weight"), vec![3 * c, c], 0.02),
                    c_proj: p(format!("{h}.attn.c_proj.weight"), vec![c, c], proj_std),
                    ln_2: p(format!("{h}.ln_2.weight"), vec![c], 0.0),
                    c_fc: p(format!("{h}.mlp.c_fc.weight"), vec![4 * c, c], 0.02),
                    mlp_proj: p(format!("{h}.mlp.c_proj.weight"), vec![c, 4 * c], proj_std),
                }
            })
            .collect(),
        ln_f: p("transformer.ln_f.weight".into(), vec![c], 0.0),
        lm_head: cfg
            .untied
            .then(|| p("lm_head.weight".into(), vec![cfg.vocab_size, c], 0.02)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(untied: bool) -> GptConfig {
        GptConfig {
            vocab_size: 10,
            block_size: 4,
            n_layer: 2,
            n_head: 2,
            n_embd: 8,
            untied,
        }
    }

    #[test]
    fn names_follow_nanogpt_in_order() {
        let s = specs(&cfg(false));
        let names: Vec<&str> = s.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 15);
        assert_eq!(names[0], "transformer.wte.weight");
        assert_eq!(names[2], "transformer.h.0.ln_1.weight");
        assert_eq!(names[8], "transformer.h.1.ln_1.weight");
        assert_eq!(names[14], "transformer.ln_f.weight");
        assert_eq!(s.head().name, "transformer.wte.weight");
        let u = specs(&cfg(true));
        assert_eq!(u.len(), 16);
        assert_eq!(u.iter().last().unwrap().name, "lm_head.weight");
        assert_eq!(u.head().name, "lm_head.weight");
    }

    #[test]
    fn map_and_from_vec_keep_the_order() {
        let s = specs(&cfg(true));
        let idx = s.map(|p| p.name.clone());
        let flat: Vec<String> = idx.iter().cloned().collect();
        let back = Params::from_vec(&s, flat.clone()).unwrap();
        assert_eq!(back, idx);
        assert!(Params::from_vec(&s, flat[1..].to_vec()).is_none());
        let n: Result<Params<usize>, ()> = s.try_map(|p| Ok(p.numel()));
        assert_eq!(n.unwrap().h[1].c_fc, 4 * 8 * 8);
    }
}
