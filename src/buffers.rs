//! Buffer handles and the CPU twins' memory: what kernels and executors share.
//!
//! The arrows run one way: `kernels -> buffers <- runtime`. A kernel names its operands by
//! [`Buf`] and reads or writes them through [`HostMem`] on the CPU; the runtime owns the real
//! allocations (GPU buffers, or a `HostMem`) and never needs to know what a kernel computes.

/// A buffer handle, valid for the backend that allocated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Buf(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    U32,
}

/// Host memory the CPU twins run on: one `Vec` per buffer, f32 or u32.
#[derive(Default)]
pub struct HostMem {
    f: Vec<Vec<f32>>,
    u: Vec<Vec<u32>>,
    dtype: Vec<Dtype>,
}

impl HostMem {
    /// A zero-filled buffer of `len` elements.
    pub fn alloc(&mut self, len: usize, dtype: Dtype) -> Buf {
        let (f, u) = match dtype {
            Dtype::F32 => (vec![0.0; len], Vec::new()),
            Dtype::U32 => (Vec::new(), vec![0; len]),
        };
        self.f.push(f);
        self.u.push(u);
        self.dtype.push(dtype);
        Buf(self.dtype.len() - 1)
    }

    /// How many buffers exist.
    pub fn count(&self) -> usize {
        self.dtype.len()
    }

    /// Frees every buffer from index `n` on.
    pub fn truncate(&mut self, n: usize) {
        self.f.truncate(n);
        self.u.truncate(n);
        self.dtype.truncate(n);
    }

    pub fn len(&self, b: Buf) -> usize {
        match self.dtype[b.0] {
            Dtype::F32 => self.f[b.0].len(),
            Dtype::U32 => self.u[b.0].len(),
        }
    }

    /// Elements held over all buffers.
    pub fn total_len(&self) -> usize {
        self.f.iter().map(Vec::len).sum::<usize>() + self.u.iter().map(Vec::len).sum::<usize>()
    }

    pub fn f(&self, b: Buf) -> &[f32] {
        &self.f[b.0]
    }

    pub fn u(&self, b: Buf) -> &[u32] {
        &self.u[b.0]
    }

    pub fn f_mut(&mut self, b: Buf) -> &mut [f32] {
        &mut self.f[b.0]
    }

    pub fn u_mut(&mut self, b: Buf) -> &mut [u32] {
        &mut self.u[b.0]
    }

    /// Runs `f` with `out` writable and every other buffer readable. `out` is moved out for
    /// the call, so a kernel that also *reads* `out` must take it through the `&mut` slice.
    pub fn with<R>(&mut self, out: Buf, f: impl FnOnce(&HostMem, &mut [f32]) -> R) -> R {
        let mut o = std::mem::take(&mut self.f[out.0]);
        let r = f(self, &mut o);
        self.f[out.0] = o;
        r
    }

    /// [`HostMem::with`] for two outputs (distinct buffers).
    pub fn with2<R>(
        &mut self,
        [a, b]: [Buf; 2],
        f: impl FnOnce(&HostMem, &mut [f32], &mut [f32]) -> R,
    ) -> R {
        assert_ne!(a, b, "two outputs in one buffer");
        let (mut x, mut y) = (
            std::mem::take(&mut self.f[a.0]),
            std::mem::take(&mut self.f[b.0]),
        );
        let r = f(self, &mut x, &mut y);
        self.f[a.0] = x;
        self.f[b.0] = y;
        r
    }

    /// [`HostMem::with`] for three outputs (distinct buffers).
    pub fn with3<R>(
        &mut self,
        [a, b, c]: [Buf; 3],
        f: impl FnOnce(&HostMem, &mut [f32], &mut [f32], &mut [f32]) -> R,
    ) -> R {
        assert!(c != a && c != b, "two outputs in one buffer");
        let mut z = std::mem::take(&mut self.f[c.0]);
        let r = self.with2([a, b], |m, x, y| f(m, x, y, &mut z));
        self.f[c.0] = z;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_written_and_inputs_stay_readable() {
        let mut m = HostMem::default();
        let a = m.alloc(3, Dtype::F32);
        let b = m.alloc(3, Dtype::F32);
        let c = m.alloc(2, Dtype::U32);
        m.f_mut(a).copy_from_slice(&[1.0, 2.0, 3.0]);
        m.u_mut(c).copy_from_slice(&[7, 9]);
        m.with(b, |m, out| {
            for (o, (x, &k)) in out.iter_mut().zip(m.f(a).iter().zip(m.u(c).iter().cycle())) {
                *o = x * k as f32;
            }
        });
        assert_eq!(m.f(b), &[7.0, 18.0, 21.0]);
        let d = m.alloc(1, Dtype::F32);
        m.with3([a, b, d], |_, x, y, z| {
            x[0] = 10.0;
            y[0] = 20.0;
            z[0] = 30.0;
        });
        assert_eq!((m.f(a)[0], m.f(b)[0], m.f(d)[0]), (10.0, 20.0, 30.0));
        assert_eq!((m.len(c), m.count(), m.total_len()), (2, 4, 9));
        m.truncate(2);
        assert_eq!(m.count(), 2);
    }
}
