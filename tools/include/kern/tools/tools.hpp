#pragma once
// kern::tools umbrella: empirical NTK, linearized models, per-sample gradients, Hessian spectra (Papyan's GGN
// decomposition, Adam-preconditioned sharpness), the training-dynamics tracker, the
// coordinate check, rank statistics.
#include <kern/tools/coord_check.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/hessian_decomposition.hpp>
#include <kern/tools/linearize.hpp>
#include <kern/tools/ntk.hpp>
#include <kern/tools/per_sample_grads.hpp>
#include <kern/tools/stats.hpp>
#include <kern/tools/preconditioned.hpp>
#include <kern/tools/tracker.hpp>
