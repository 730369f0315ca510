#pragma once
// kern::optim umbrella: optimizers (SGD, Adam, AdamW), lr schedules, gradient clipping,
// param groups from parameterization records.
#include <kern/optim/adam.hpp>
#include <kern/optim/clip.hpp>
#include <kern/optim/optimizer.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/optim/schedule.hpp>
#include <kern/optim/sgd.hpp>
