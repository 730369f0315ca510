#pragma once
// The umbrella header of kern_core (framework/): everything a training script needs from
// the framework. optim, models and tools have their own: <kern/optim/optim.hpp>,
// <kern/models/models.hpp>, <kern/tools/tools.hpp>.
#include <kern/autograd.hpp>
#include <kern/backend.hpp>
#include <kern/dtype.hpp>
#include <kern/error.hpp>
#include <kern/functional.hpp>
#include <kern/gemm.hpp>
#include <kern/generator.hpp>
#include <kern/io/checkpoint.hpp>
#include <kern/io/safetensors.hpp>
#include <kern/memory.hpp>
#include <kern/data/data.hpp>
#include <kern/nn/nn.hpp>
#include <kern/ops.hpp>
#include <kern/param/param.hpp>
#include <kern/progress.hpp>
#include <kern/shape.hpp>
#include <kern/tensor.hpp>
