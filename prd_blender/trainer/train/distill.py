"""Stages 2-4 of PRD: distil physically based light and material out of the stage-1 radiance field.

Per pixel: I = a * tonemap(I_phy) + (1 - a) * I_raw, where a is the splatted distillation progress
(DESIGN.md §3). Stage 2 fits the specular lobe alone (metallic fixed to 1, progress held near 1: see
``DistillConfig.progress_init``); stage 3 bakes visibility,
frees metallic and adds the diffuse term plus the progress and light losses; stage 4 refines everything
with a slower progress learning rate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..capture import View
from ..shading.brdf_lut import BrdfLut, get_brdf_lut
from ..shading.diffuse import diffuse_irradiance, irradiance_sh
from ..shading.envmap import EnvironmentLight, rotated_environment
from ..shading.hdr_io import read_image
from ..shading.indirect import indirect_irradiance, indirect_radiance
from ..shading.reflection import BounceSource, hit_radiance, trace_reflections
from ..shading.shade import linear_to_srgb
from ..shading.specular_occlusion import specular_visibility
from ..shading.sun import Sun, split_sun, sun_radiance, sun_sh
from ..shading.visibility import VisibilityGrid, bake_visibility
from .background import paired_backgrounds, random_background
from .checkpoint import load_checkpoint, save_checkpoint
from .gaussians import Gaussians, shortest_axes
from .losses import AlbedoOrientation, depth_distortion, edge_aware_smoothness, flatten_loss, image_loss, psnr
from .normal_sign import orient_normals
from .progress import Progress
from .render import Camera, normal_consistency, render_pbr_maps
from .stage1 import Cancelled, StopFlag

# ``metallic_weight`` for objects known to have no bare metal (``prd train --dielectric``, the panel's No Bare
# Metal). At run 23's defaults (relighting run 28, 3 x 1000): diffuse relighting +0.56 / +0.68 dB on two seeds, albedo
# +1.5 dB, translucent +0.67 dB; roughness MAE +0.02-0.05 (the roughness takes up what the metal did). On the mixed
# object (half brass) it cost 2.1 dB (run 4), so it is not the default. Beside the material smoothness (run 29), which
# takes most of the diffuse object's partial metal away by itself, it gains little but costs nothing (relighting run
# 32, diffuse: relighting +0.08 dB, roughness MAE 0.067 -> 0.063, metallic MAE 0.107 -> 0.001).
DIELECTRIC_PRIOR = 0.05


@dataclass
class DistillConfig:
    stage2: int = 1_000
    stage3: int = 1_000
    stage4: int = 1_000
    # Material and progress start saturated (sigmoid logits of 0.99 / 0.01) and Adam moves a logit by
    # about the learning rate per step: 0.05 lets them cross the range within ~100 iterations.
    lr_albedo: float = 0.05
    lr_roughness: float = 0.05
    lr_metallic: float = 0.05
    # Albedo's and roughness's rates from stage 3 on (None: lr_albedo / lr_roughness). Stage 2 must carry them
    # far from their saturated start; after it, Adam's per-parameter normalisation moves a Gaussian's logit at
    # the full rate on evidence however weak, and the material ends saturated per Gaussian (diffuse object, true
    # roughness 0.9: of the test views' pixel weight, a tenth has a roughness under 0.05 and 61 % over 0.95).
    # Slower rates do not help (relighting run 28, 3 x 1000): roughness 0.01 leaves stage 2's spread in place, and
    # metallic 0.01 only keeps metals from climbing (diffuse +0.55, glossy -1.13, mixed -0.29 dB); 0.01 in stage 4
    # alone: mean -0.04 dB.
    lr_albedo_stage34: float | None = None
    lr_roughness_stage34: float | None = None
    lr_metallic_stage4: float | None = None  # metallic's rate in stage 4 (None: lr_metallic)
    lr_progress: float = 0.05
    lr_progress_stage2: float = 0.0  # with progress_init: stage 2 is the physical branch's specular fit
    lr_progress_stage4: float = 0.01
    lr_light: float = 0.01
    # The light's rate in stages 3-4 (None: lr_light). A tenth (0.001) measured no better: diffuse relighting
    # +0.16 dB (noise), mixed -0.40 dB (docs/benchmarks.md, relighting run 12).
    lr_light_stage34: float | None = None
    # Hold the learned light in stage 4, as the real-scene variant does (DESIGN.md §3). What one training light
    # leaves undetermined keeps moving as long as it trains: at the High quality's 3 x 3000 the mixed object's
    # light error grew 0.064 -> 0.114 and it relit 0.44 dB worse (relighting run 26). Held (run 27, seed 0): at 3 x 3000
    # mixed +0.39 dB (light error 0.081), diffuse -0.05, glossy -0.07 (albedo -0.56 dB); at 3 x 1000 the mean is
    # unchanged (mixed +0.24, diffuse -0.13, glossy -0.09 dB). Again at 3 x 3000 after the material smoothness (run 34):
    # mean +0.02 dB (mixed +0.17, diffuse -0.03, glossy -0.09), glossy's albedo -0.56 dB again; diffuse's light drifts
    # in stage 3, so holding it in stage 4 does not stop High's loss there. Off, and no preset uses it.
    freeze_light_stage4: bool = False
    # Times the scene extent. Stage 1 ends at 1.6e-6; ten times that lets the physical image move the geometry
    # (relighting run 14, 3 x 1000: relighting mean 24.82 -> 24.98 dB, normals 7.8 -> 7.1 deg, mixed's Chamfer
    # 1.07 -> 1.02 %; 5e-5: the same relighting, 0.13 dB less NVS, mixed's learned light worse).
    lr_means: float = 1.6e-5
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    # The rotations' rate from stage 3 on (None: lr_quats). Measured (relighting runs 39-40, 3 x 1000, seed 0): 3e-3 in
    # every stage brings mixed's normals 9.64 -> 9.04 deg but costs glossy 0.27 dB and mixed 0.37 dB; 3e-3 from stage 3
    # only keeps glossy's cost (-0.25 dB) and loses mixed's normal gain (9.93 -> 10.03 deg), so that gain is made in
    # stage 2; 2e-3 in every stage: mixed's normals -0.5 deg for glossy -0.09 and mixed -0.16 dB. All off. 3e-3 in
    # stage 2 only (this field 1e-3; run 41, two seeds): mixed's normals -0.60 / -1.05 deg, relighting within the seeds'
    # spread; diffuse's normals +0.33 deg on one seed. A lead, not yet the default.
    lr_quats_stage34: float | None = None
    lr_opacities: float = 0.05
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    mask_weight: float = 0.08
    # The light's grey prior. DESIGN.md §3 gives 0.003 against one image term; with ``physical_weight`` 1 PRD
    # scores the image twice (the blend and I_phy) from stage 3 on, so 0.006 keeps the published ratio and 0.012
    # doubles it. 0.006 (relighting run 23, 3 x 1000): relighting diffuse +0.05, glossy +0.24 / +0.17, mixed -0.18 /
    # +0.05 dB (two seeds), mean 26.57 -> 26.65; albedo mean +0.23 dB. The direct fit gained as much (glossy +0.23 dB):
    # the prior was too weak for both, and the ablation's gap was unchanged. Doubling the depth-normal and
    # light-orientation weights as well cost mixed 0.60 dB. 0.012 (runs 40-41, two seeds): glossy +0.20 / +0.21 dB (its
    # copper holds more metal), diffuse +0.26 / +0.09, mixed -0.11 / -0.12 dB; mean 27.05 -> 27.16 / 27.11 dB, albedo
    # +0.19 / +0.14 dB. The direct fit gains less, so PRD - (a) is +1.19 / +1.10 dB on mixed, -0.44 / -0.36 on glossy.
    light_weight: float = 0.012
    # Depth-normal consistency (as in 2DGS / GS-IR): splatted normals should agree with the normals of the
    # rendered depth surface. 0 turns it off. Before the voted sign it was worth 0.8 dB on glossy (normals 30.7 ->
    # 15.5 deg). The depth surface's normals are noisier than the splatted ones (mixed 13.4 against 10.7 deg), so
    # a lighter pull: 0.03 against 0.1 (relighting runs 21-22, 3 x 1000) relights better on every object (diffuse
    # +0.07, glossy +0.14, mixed +0.34 / +0.20 dB on two seeds; mean 26.41 -> 26.57), albedo mean -0.11 dB.
    normal_weight: float = 0.03
    # Vote each Gaussian's normal sign from the training views (train/normal_sign.py) at the first iteration and
    # every this many after; 0: flip every normal to face each camera, as 3DGS-DR does, which leaves the
    # silhouette's normals 20 deg off, leaning to the viewer. At 500 (relighting run 19, 3 x 1000): relighting
    # glossy +2.00, mixed +0.72 / +0.61 (two seeds), diffuse -0.60 dB (its albedo +0.55 dB); normals 7.2 -> 6.4 deg
    # on the mean; NVS +0.9 dB. Each vote renders 25 training views.
    orient_every: int = 500
    light_resolution: int = 128
    visibility_resolution: int = 120  # DESIGN.md: ~120^3; 8 s for 100k Gaussians on 2 cores
    # Visibility is read this many grid cells out along the normal. At the surface point itself, half of
    # the trilinear corners are cells inside the object (occluded in every direction): with ground-truth
    # materials, light and geometry that costs 7 dB on the diffuse object; 2.5 cells gains 2.2 dB over no
    # visibility at all (docs/benchmarks.md, shading-model ceiling).
    visibility_offset: float = 2.5
    tonemap: str = "srgb"  # "srgb" for captures rendered with a Standard view transform, "aces" for photos
    real_scene: bool = False  # no mask: progress target 1 everywhere, light frozen in stage 4
    # A known environment: an equirect HDR/EXR of the capture's surroundings (Blender's convention, turned about
    # +Z by ``known_light_rotation`` degrees, as Blender's Mapping node). The light keeps that map's shape and
    # only a per-channel gain is fitted (the images' exposure and white balance). On a diffuse object the images
    # cannot tell light from albedo (per-Gaussian albedo absorbs any smooth error of the light); None: learned.
    # Given the training HDRI (relighting run 12): relighting glossy +1.03, mixed +0.33, diffuse +1.86 dB.
    known_light: str | None = None
    known_light_rotation: float = 0.0
    # Metallic at the start of stage 3 (None: keep stage 2's 1). Stage 2 shades everything as metal, so
    # its metallic value carries no evidence; starting from 1 (sigmoid logit 9) the freed parameter
    # barely moves (run 1: MAE 0.73 on a dielectric). Low, the images can still take the metal back (mixed's
    # brass does). With the voted normal sign, 0.2 against 0.5 (relighting run 20, 3 x 1000): diffuse +0.77,
    # glossy -0.11, mixed +0.12 / +0.05 dB on two seeds; without the vote 0.2 lost on glossy and mixed (runs 18-19).
    # 0.1 against 0.2 (run 20): diffuse +0.21, glossy -0.04, mixed -0.05 / +0.03 dB; mean 26.36 -> 26.42 dB.
    metallic_stage3: float | None = 0.1
    # Roughness at the start of stage 3 (None: keep stage 2's). Stage 2 fits every surface as metal, so a matte
    # dielectric comes out of it as a broad metal lobe, and that roughness outlives the metallic's restart: with the
    # training HDRI given as the light, mixed's dielectric squares still end 43 % metal with their roughness pressed
    # to the middle (0.1 -> 0.37), though the true material fits those pixels as well. 0.5 against stage 2's
    # (relighting run 34, 3 x 1000, seed 0): roughness MAE diffuse 0.067 -> 0.003, glossy 0.089 -> 0.085, mixed
    # 0.164 -> 0.154 (mean 0.107 -> 0.081); relighting +0.05 / +0.04 / +0.07 dB; albedo mean +0.10 dB.
    roughness_stage3: float | None = 0.5
    # Prior towards dielectric from stage 3 on: weight times the mean splatted metallic over the object.
    # A rough metal with the same albedo shades almost like a diffuse surface under one light, so nothing
    # in the images separates them; most surfaces are dielectric. 0 turns it off.
    metallic_weight: float = 0.0
    # The prior's per-pixel weight is roughness ** power: 0 weighs every pixel alike; higher powers spare
    # smooth metals, whose mirror-like reflections no dielectric explains. Measured at weight 0.05, power 2
    # (docs/benchmarks.md, relighting run 6): diffuse +0.87 dB, mixed -0.92 dB (ungated: -2.0), so unused.
    metallic_prior_power: float = 0.0
    # Specular occlusion (shading.specular_occlusion) and indirect light (shading.indirect) from stage 3 on;
    # ``indirect`` scales the bounce (0: off; below 1 allows for the blocker's own occlusion). Alone, the
    # occlusion lowers the shading model's ceiling (glossy -4.5 dB under the training HDRI, relighting run 5):
    # what blocks the sky is more of the lit object. With the bounce at 0.5 the mean ceiling rises (relighting
    # 25.67 -> 25.96 dB, training HDRI 30.43 -> 31.26; mixed +0.9 dB, glossy -0.4) and trained relighting at 3 x 250
    # goes 22.17 -> 22.51 dB (mixed +0.58, diffuse +0.57, glossy -0.12; docs/benchmarks.md, relighting run 7).
    specular_visibility: bool = True
    indirect: float = 0.5
    # Specular inter-reflection traced along the mirror direction (shading.reflection) from stage 3 on, for
    # surfaces smoother than ``reflection_roughness``: fully below 0.4 of it, blended into the SH occlusion and
    # assumed blocker above (a rough lobe is not one ray). Needs ``specular_visibility``. With the true mesh it
    # raises the shading model's relighting ceiling on glossy 26.71 -> 27.72 dB (mixed +0.08, diffuse 0). Trained,
    # it costs glossy 3.4 dB (relighting run 31, 3 x 1000): the trained surface is fuzzy, so a ray leaving 2.5 cells
    # out grazes its own surface's density (mean transmittance 0.85 against 0.98 from 5 cells), and from 5 cells out the
    # splatted normals, smoothed across the sphere-torus crease, send almost no ray into the other part (0.4 % of
    # the pixels against 8-11 % with the true normals). So it is off: a switch for sharper geometry.
    reflection_trace: bool = False
    reflection_roughness: float = 0.5
    # Progress at the start of stage 2. DESIGN.md §3 says 0.01 and lets it rise by itself, but measured, it
    # does not (the radiance field already fits the images), and stage 2 then teaches the physical branch
    # nothing: glossy relighting 15.7 dB, and no variant with stage-2 progress well below 1 did better than
    # 16.1. Held at 0.99 through stage 2 and freed in stage 3: 19.3 dB, normals 15 -> 9 deg, albedo +2.5 dB
    # (docs/benchmarks.md, relighting run 3). Progress still falls from stage 3 on where physics cannot
    # explain a pixel.
    progress_init: float = 0.99
    # The last stage (2-4; 0: none) in which the radiance field's colour is splatted on detached geometry
    # (render_pbr_maps): the geometry then answers to the physical image alone, whatever the progress, and
    # the radiance field cannot bend the normals the physical branch needs. Measured (docs/benchmarks.md,
    # relighting run 5): it is why stage 2 failed at progress 0.5 (15.5 -> 17.2 dB, normals 18 -> 12 deg at
    # the end of stage 2); in every stage, glossy relighting 19.3 -> 20.0 dB, albedo +0.6 dB, normals
    # 9.0 -> 8.1 deg; mixed and diffuse within 0.11 dB. Costs a second rasterisation (about 1.1x per
    # iteration on the CPU).
    raw_fixed_geometry: int = 4
    # 3DGS-DR normal propagation in stage 2 every this many iterations (0: off). Off: it lifts every
    # Gaussian to opacity 0.9, and stage 2 never brings the radiance field's transparent ones back (98 %
    # stay opaque). At the product's 3 x 1000 (one propagation, at iteration 500) glossy fell to NVS 21.1 dB,
    # relighting 13.6 dB, normals 35.8 deg (docs/benchmarks.md, relighting run 9). The benchmark's shorter
    # stages never reached it, which is why every earlier figure was measured without it.
    propagate_every: int = 0
    # Weight of a second image loss on I_phy alone from stage 3 on (0: the method as published). The blend
    # scales the physical branch's gradient by the progress, and where progress stays low PRD relights worse
    # than the direct fit (relighting run 10: 11-13 % more error where progress < 0.8). At 1 (relighting run 11,
    # 3 x 1000, same data and stage 1): relighting glossy 23.08 -> 23.05, mixed 22.81 -> 23.75, diffuse
    # 25.60 -> 26.21 dB; albedo -0.4 / +2.3 / +0.6 dB; NVS +0.1 / +0.2 / 0.0 dB. With it, what the learned progress
    # decides for relighting is small: held at 0.99 throughout, glossy relights 0.08 dB worse and mixed -0.02 / +0.02 dB
    # (two seeds), while the blend's novel views lose 0.4 dB (relighting run 24). Mixed's lead over the direct fit
    # is this term's doubling of the image from stage 3 on: the direct fit with its stage-3-4 regularisers halved
    # relights mixed as PRD does (25.22 against 25.20 dB, relighting run 25).
    physical_weight: float = 1.0
    # Whether that term's gradient reaches the light (False: only the blend, weighted by the progress, fits the
    # light, so what physics cannot explain does not leak into it). False measured worse on mixed: relighting
    # 23.14 dB against 23.75, albedo 16.23 against 18.20 dB (relighting run 11).
    physical_light: bool = True
    # Edge-aware albedo smoothness (train.losses.edge_aware_smoothness) from stage 3 on; 0 turns it off. Meant to
    # pin the light on diffuse objects, whose per-Gaussian albedo absorbs any smooth error in the light; at 0.02
    # the light's irradiance grew more contrasty instead and diffuse relit 0.59 dB worse (relighting run 12).
    albedo_smooth_weight: float = 0.0
    # Edge-aware smoothness of the roughness and metallic maps (train.losses.edge_aware_smoothness) from
    # ``material_smooth_stage`` on (the metallic's never before 3, it is fixed in stage 2); 0: off. Adam moves each
    # Gaussian's material logit at about the full rate on evidence however weak, so a material the images barely
    # constrain ends saturated per Gaussian (relighting run 28) and the albedo takes up the noise. Its L1 force is
    # a threshold on the evidence a Gaussian needs to leave its neighbours. At 0.01 from stage 3 (relighting run
    # 29, 3 x 1000, seeds 0 / 1): diffuse relighting +1.11 / +1.21 dB, albedo +1.5 dB, roughness MAE 0.16 -> 0.07,
    # metallic MAE 0.27 -> 0.11; glossy +0.20 / +0.24 dB; mixed 0.00 / -0.11 dB (albedo +0.2 dB, roughness MAE
    # 0.186 -> 0.164); relighting mean 26.65 -> 27.08 / 26.60 -> 27.05 dB. From stage 2 it also holds the roughness
    # at its start of 0.99 wherever the descent is not uniform: mixed -2.73 dB at 0.01. At 0.03 from stage 3 (run 30,
    # one seed): diffuse +0.32, glossy +0.35, mixed -0.52 dB (its metal smeared into the dielectric squares).
    material_smooth_weight: float = 0.01
    material_smooth_stage: int = 3
    # Total variation of the albedo where the surface is metal, from stage 3 on; 0: off. A metal's albedo is its
    # F0, uniform within one material, but on the mixed object's smoothest brass it scores 14.4 dB (relighting run
    # 30): it takes up what the split sum cannot reproduce of a sharp reflection (environment detail, the ball and
    # bowl in each other). Not edge-aware, since a sharp reflection puts edges in the photo wherever the albedo
    # varies; each neighbour pair weighs by the smaller of its two metallic values, detached, so that the term
    # cannot pay for itself by lowering the metallic. At 0.1 (relighting run 35, 3 x 1000): glossy's albedo
    # 27.67 -> 36.80 dB, relighting +0.11 dB; mixed -0.60 dB, albedo -1.32 dB, normals +1.7 deg. At 0.02: glossy's
    # albedo +1.50 dB, mixed within its seeds' spread; diffuse not trained. One seed, so then off. With the random
    # background (run 36): glossy's albedo 28.83 / 28.84 dB on two seeds against 27.59 without it (seed 0);
    # relighting glossy +0.04, mixed -0.09 dB. At 0.04 beside the pair (run 38, seed 0): albedo mean 26.27 dB,
    # relighting 27.00, roughness MAE 0.091 (glossy's albedo 30.47 dB), but mixed -0.62 dB (seed 1: -0.51) and
    # normals 6.64 deg. At 0.1 with ``metal_albedo_power`` 4 (run 39): the default.
    metal_albedo_smooth_weight: float = 0.1
    # Each pixel's weight in that term is its splatted metallic to this power. On the mixed object the dielectric
    # squares come out partly metal (splatted metallic 0.2-0.6 on most of their pixels; the brass's 0.4-1.0), so at
    # power 1 the term also flattens their multi-colour albedo, which is then fitted as more metal (at 0.1: their
    # mean metallic 0.34 -> 0.62, mixed relighting -0.96 dB, normals +1.9 deg; relighting run 39). At 4 a half metal
    # keeps a sixteenth of its pull. Measured at 0.1 and 4 against the term off (run 39, 3 x 1000, two seeds on glossy
    # and mixed): glossy's albedo +3.35 / +3.40 dB and relighting +0.13 / +0.20; mixed -0.19 / -0.23 dB, normals +0.3 /
    # +0.5 deg; diffuse (seed 0) within 0.01 dB. Relighting mean -0.02 dB, albedo mean 25.06 -> 26.13 dB.
    metal_albedo_power: float = 4.0
    # Composite each training view over a random colour, drawn per iteration, instead of the capture's background,
    # in stages 2-4 (captures with alpha; real scenes keep theirs). Over one fixed white, what the silhouette's
    # Gaussians cover beyond the object's true coverage shows white, and their colour takes it up: on the diffuse
    # object (relighting run 35) the albedo on partly covered pixels comes out 1.26 times the truth's (1.47 where
    # n.v < 0.2), with 8 % of the object's pixels carrying 30 % of its albedo error, while the shading model from
    # the truth's own inputs matches Cycles there within 7 %. A random colour asks for the true coverage instead.
    # Measured (relighting run 35, 3 x 1000, stage 1 over white): diffuse relighting +0.95 dB, albedo +1.28 dB; glossy
    # -0.43, mixed -0.23 dB; roughness MAE mean 0.081 -> 0.102. Novel views over white -2.3 dB on diffuse, but over
    # black +2.2 dB: the white-trained model keeps a white halo that only white hides. With stage 1 over random colours
    # too and metal_albedo_smooth_weight 0.02 (run 36, two seeds): albedo mean 25.28 -> 26.21 / 26.14 dB, relighting
    # 27.17 -> 27.25 / 27.23 dB, but glossy -0.42 dB on both seeds and roughness MAE 0.081 -> 0.113 (diffuse's 0.9
    # comes out 0.80-0.85): one target met for another missed, so off.
    random_background: bool = False
    # Score each view over black and over white at once, the two losses averaged, in stages 2-4 (captures with
    # alpha): what random_background asks of the coverage, without a draw's noise in every gradient. With
    # metal_albedo_smooth_weight 0.02 (relighting run 37, 3 x 1000, seed 0): diffuse +0.71 dB, albedo +0.61 dB; glossy
    # -0.27 dB (its metallic slides towards a dielectric), mixed -0.54 dB (the visibility grid baked after stage 2);
    # albedo mean 25.06 -> 25.84 dB. The same trade as the random colour, so the noise is not its cost. Off.
    paired_background: bool = False
    # The first stage (2-4) scored over the pair; before it, over the capture's background. From 3, stage 2 (and
    # the visibility grid baked from its geometry at stage 3's start) is the default's. With metal 0.02 (relighting
    # run 38): glossy's loss goes (25.93 dB, default 25.94), mixed -0.23 dB (its squares called more metal), diffuse
    # +0.31 dB but its roughness lands at 0.80 (mean roughness MAE 0.119). Kept at 2.
    paired_background_stage: int = 2
    # Thin each Gaussian towards a disc from stage 2 on (train.losses.flatten_loss: shortest over middle axis,
    # averaged over Gaussians); 0: off. Stage 1 leaves the mixed object's surface as thick, faint Gaussians
    # (median opacity 0.06, shortest axis 0.3-0.4 of the middle one), and most of its normal error is on the
    # bowl's concave inside (26 % of the pixels, 20.9 deg; the rest 5.9). At 10 (relighting run 32, 3 x 1000, one
    # seed) the Gaussians end as discs (ratio 0.005) and mixed's normals go 9.1 -> 8.6 deg, albedo +0.28 dB, but
    # glossy's normals 3.8 -> 4.0 deg and diffuse's 5.6 -> 5.7; relighting mean 27.12 -> 27.07 dB. A trade, so off.
    flatten_weight: float = 0.0
    # Depth distortion from stage 2 on (train.losses.depth_distortion: each pixel's blend weights' depth
    # variance, squared distances as 2DGS / Mip-NeRF 360); 0: off. Aimed at the mixed object's false floor: stage 1
    # fills the bowl's crevice with a faint layer 9 % of the object's size in front of the true surface (relighting
    # run 32), where the normals are 20.9 deg off. Here it brings that layer forward instead of clearing it (the
    # front layer takes every ray's first share of weight, and the means move slowly): at 100 and 1000 (run 33,
    # 3 x 100) the floor's 10th percentile goes -11 % -> -19 / -25 % and every figure gets worse. Stage 1's own
    # switch (Stage1Config.distortion_weight) is the one that gathers the rays.
    distortion_weight: float = 0.0
    # The part of the log-albedo that a degree-1/2 function of the normal explains, pooled over views
    # (train.losses.AlbedoOrientation), is what a wrong learned light leaves in a diffuse surface's albedo: a
    # third of the diffuse benchmark object's albedo error (relighting run 16). Two terms from stage 3 on, 0: off.
    # This one pulls the albedo against the pattern: at 5 the albedo left the image instead of the light taking
    # the pattern over (diffuse NVS -4.1 dB, relighting -3.3 dB), since L1 holds a fitted pixel with a constant force.
    # Measured with light_orientation_weight 0: set that to 0 to try this (each term adds the view's moments).
    albedo_orientation_weight: float = 0.0
    # This one pulls a learned light's diffuse irradiance at each pixel's normal by the pattern (light_orientation)
    # and the albedo follows the image. At 1: diffuse relighting +1.22 dB, albedo +0.88 dB, light correlation
    # 0.68 -> 0.93; but mixed, whose brass pins the light and whose true albedo has a pattern of its own, -1.71 dB.
    # At 0.1: diffuse +1.16 dB, glossy +0.21 dB, mixed -0.06 / -0.20 dB on two seeds (relighting runs 16-17).
    # 0.03 keeps mixed's learned light (correlation 0.88 against 0.76-0.79) but relights 0.05 dB worse on the mean of
    # the three objects (run 18).
    # Off with a known light, and for real scenes (unmeasured, and a floor is a texture that really goes with one
    # orientation).
    light_orientation_weight: float = 0.1
    # Relighting under a fixed map splits off its sun (shading.sun: brighter than this many times the map's
    # mean luminance) as a directional light with a ray-marched shadow; 0 keeps the whole map in the split
    # sum and SH visibility. Training's learned light is never split.
    sun_ratio: float = 50.0
    # A known light's sun is split off in training too (stages 2-4 and every render of the trained light), so
    # its hard shadows are explained by the geometry instead of being painted into the albedo.
    known_light_sun: bool = True
    propagate_hold: int = 100
    checkpoint_every: int = 500
    log_every: int = 10
    ssim_weight: float = 0.2
    sh_degree: int = 3
    # Ablations: "prd" (the method), "direct" (progress forced to 1 from stage 2 on),
    # "no_losses" (stages without the progress and light losses).
    variant: str = "prd"

    def __post_init__(self) -> None:
        # Refused where the config is made (before stage 1 runs), not one switch silently ignored.
        if self.random_background and self.paired_background:
            raise ValueError("random_background and paired_background both ask for the true coverage; turn on one")
        if self.metal_albedo_power < 0:
            raise ValueError(f"metal_albedo_power must be 0 or more, not {self.metal_albedo_power}")
        if self.paired_background_stage not in (2, 3, 4):
            raise ValueError(f"paired_background_stage must be 2, 3 or 4, not {self.paired_background_stage}")

    @classmethod
    def from_run(cls, saved: dict) -> DistillConfig:
        """The config a run was trained with, from its run.json ``distill`` entry. Fields the trainer dropped
        since are ignored; fields added since take the value that matches how the run was trained (what the
        code did before the field existed), not today's default, so old runs relight as they were fitted."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**_BEFORE_FIELD_EXISTED, **{k: v for k, v in saved.items() if k in known}})

    def stage_of(self, it: int) -> int:
        if it <= self.stage2:
            return 2
        if it <= self.stage2 + self.stage3:
            return 3
        return 4

    @property
    def total(self) -> int:
        return self.stage2 + self.stage3 + self.stage4


# What a run trained before these fields existed did: none of these terms existed then (a resumed run goes on
# training as it began).
_BEFORE_FIELD_EXISTED: dict = {"indirect": 0.0, "specular_visibility": False, "physical_weight": 0.0,
                               "known_light_sun": False, "light_orientation_weight": 0.0, "orient_every": 0,
                               "metallic_stage3": None, "material_smooth_weight": 0.0, "roughness_stage3": None,
                               "metal_albedo_smooth_weight": 0.0, "metal_albedo_power": 1.0}


def tonemap(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "srgb":
        return linear_to_srgb(x.clamp(0, 1))
    if kind == "aces":
        from ..shading.shade import aces_filmic

        return aces_filmic(x)
    raise ValueError(f"unknown tone map {kind!r}")


def inverse_tonemap(y: torch.Tensor, kind: str) -> torch.Tensor:
    """Display [0, 1] -> linear: the inverse of :func:`tonemap` (exact below the clip)."""
    from ..shading.shade import aces_filmic_inverse, srgb_to_linear

    inverses = {"srgb": lambda t: srgb_to_linear(t.clamp(0, 1)), "aces": aces_filmic_inverse}
    if kind not in inverses:
        raise ValueError(f"unknown tone map {kind!r}")
    return inverses[kind](y)


def metallic_prior(maps: dict[str, torch.Tensor], power: float) -> torch.Tensor:
    """The dielectric prior: mean splatted metallic over the object, each pixel weighted by roughness ** power.

    Rough surfaces are where metal and dielectric look alike under one light; a smooth metal's sharp
    reflection is evidence no dielectric explains, so a power > 0 spares it. Roughness is detached: the prior
    must not buy itself a lower value by making surfaces smoother."""
    gate = maps["roughness"].detach() ** power
    return (maps["metallic"] * gate * maps["coverage"]).mean()


def light_orientation(maps: dict, light: EnvironmentLight, orientation: AlbedoOrientation) -> torch.Tensor:
    """Pull the light's log diffuse irradiance at each covered pixel's normal up by the pattern of the normal that
    the albedo shows (``AlbedoOrientation``, dielectric pixels weighted by 1 - metallic): where the albedo came
    out bright for its orientation, the light gave that orientation too little. Gradient reaches the light only."""
    n = orientation.update(maps["albedo"], maps["normal"], maps["coverage"], 1 - maps["metallic"])
    if n is None:
        return light.log_radiance.sum() * 0.0
    log_irr = irradiance_sh(n, light.sh_coeffs(order=2)).clamp_min(1e-6).log()
    return ((log_irr - (log_irr + orientation.pattern(n)).detach()) ** 2).mean()


def relight_environment(light: EnvironmentLight, cfg: DistillConfig) -> tuple[EnvironmentLight, Sun | None]:
    """A fixed light as ``shade_maps`` takes it for relighting: the sky, and its sun split off (``sun_ratio``)."""
    sun, sky = split_sun(light, cfg.sun_ratio)
    return sky, sun


def trained_environment(light: EnvironmentLight, cfg: DistillConfig) -> tuple[EnvironmentLight, Sun | None]:
    """The training light as ``shade_maps`` takes it: a known light's sun split off (``known_light_sun``),
    differentiably in its gain; a learned light whole."""
    if cfg.known_light and cfg.known_light_sun:
        return relight_environment(light, cfg)
    return light, None


def shade_maps(
    maps: dict, light: EnvironmentLight, lut: BrdfLut, vis: VisibilityGrid | None, stage: int, cfg: DistillConfig,
    sun: Sun | None = None, source: BounceSource | None = None,
) -> dict[str, torch.Tensor]:
    """Deferred shading of splatted maps: returns I_phy (linear), its tone-mapped form and the blend; with
    ``physical_light`` off also ``phy_display_fixed_light``, I_phy on a light that takes no gradient.
    ``sun``: a directional light beside ``light`` (``relight_environment``), shadowed through ``vis``.
    ``source``: the Gaussians a traced reflection can hit (``bounce_source``; ``reflection_trace``)."""
    levels, l_sh = light.prefiltered_levels(), light.sh_coeffs(order=2)
    phy = _physical(maps, light, levels, l_sh, lut, vis, stage, cfg, sun, source)
    progress = maps["progress"]
    if cfg.variant == "direct":
        progress = torch.ones_like(progress)
    phy_display = tonemap(phy, cfg.tonemap)
    blend = progress * phy_display + (1 - progress) * maps["raw"]
    out = {"phy": phy, "phy_display": phy_display, "blend": blend, "progress": progress}
    if _physical_term_on(stage, cfg) and not cfg.physical_light and torch.is_grad_enabled():  # training only
        fixed_sun = None if sun is None else Sun(sun.direction, sun.irradiance.detach())
        fixed = _physical(maps, light, [lv.detach() for lv in levels], l_sh.detach(), lut, vis, stage, cfg, fixed_sun,
                          source)
        out["phy_display_fixed_light"] = tonemap(fixed, cfg.tonemap)
    return out


def _physical(maps: dict, light: EnvironmentLight, levels: list[torch.Tensor], l_sh: torch.Tensor, lut: BrdfLut,
              vis: VisibilityGrid | None, stage: int, cfg: DistillConfig, sun: Sun | None = None,
              source: BounceSource | None = None) -> torch.Tensor:
    """I_phy (linear) of the maps under the light's mip chain ``levels`` and its SH ``l_sh`` (order 2), plus
    ``sun`` if given."""
    albedo, rough = maps["albedo"], maps["roughness"]
    metal = torch.ones_like(maps["metallic"]) if stage == 2 else maps["metallic"]
    n, v = maps["normal"], maps["view"]
    n_dot_v = (n * v).sum(-1, keepdim=True).clamp(1e-4, 1)
    refl = 2 * n_dot_v * n - v
    f0 = 0.04 * (1 - metal) + albedo * metal
    scale, bias = lut.lookup(n_dot_v, rough)
    spec = light.specular(refl.reshape(-1, 3), rough.reshape(-1), levels).reshape(refl.shape) * (f0 * scale + bias)
    # The sun has its own shadow, so it is added after the sky's specular occlusion; what the object's own
    # surfaces bounce (``l_bounce``) includes it.
    sun_rad = 0.0 if sun is None else _sun_term(maps, albedo, rough, metal, vis, sun, cfg)
    l_bounce = l_sh if sun is None else l_sh + sun_sh(sun).to(l_sh)
    if stage == 2:
        return spec + sun_rad
    shape = n.shape
    if vis is None:
        irr = irradiance_sh(n.reshape(-1, 3), l_sh).reshape(shape)
    else:
        v_sh = vis.query((maps["position"] + n * (cfg.visibility_offset * vis.cell)).reshape(-1, 3))
        irr = diffuse_irradiance(n.reshape(-1, 3), v_sh, l_sh).reshape(shape)
        # What a blocker made of this surface reflects: its diffuse albedo plus its specular F0.
        rho = cfg.indirect * ((1 - metal) * albedo + f0)
        if cfg.indirect > 0:
            irr = irr + rho * indirect_irradiance(n.reshape(-1, 3), v_sh, l_bounce).reshape(shape)
        if cfg.specular_visibility:
            occ = specular_visibility(v_sh, n.reshape(-1, 3), refl.reshape(-1, 3), rough.reshape(-1))
            occ = occ.reshape(*shape[:-1], 1)
            bounce = rho * indirect_radiance(refl.reshape(-1, 3), l_bounce).reshape(shape) if cfg.indirect > 0 else 0.0
            if cfg.reflection_trace and source is not None:
                occ, bounce = _traced(maps, refl, rough, occ, bounce, source, light, levels, lut, vis, cfg, sun)
            spec = spec * occ + (1 - occ) * bounce * (f0 * scale + bias)
    return (1 - metal) * albedo / math.pi * irr + spec + sun_rad


def _traced(maps: dict, refl: torch.Tensor, rough: torch.Tensor, occ: torch.Tensor, bounce: torch.Tensor | float,
            source: BounceSource, light: EnvironmentLight, levels: list[torch.Tensor], lut: BrdfLut,
            vis: VisibilityGrid, cfg: DistillConfig, sun: Sun | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The specular occlusion and what the blocked part reflects, with the mirror ray traced
    (``reflection_trace``) where the surface is smooth: (occ, bounce), each (H, W, 1 / 3)."""
    shape = refl.shape
    w = ((cfg.reflection_roughness - rough.detach()) / (0.6 * cfg.reflection_roughness)).clamp(0, 1)
    if "coverage" in maps:  # not on the background
        w = w * (maps["coverage"].detach() > 0.5)
    sel = w.reshape(-1) > 0
    bounce = torch.as_tensor(bounce, dtype=refl.dtype).expand(shape)
    if not bool(sel.any()):
        return occ, bounce
    n = maps["normal"].reshape(-1, 3)[sel]
    start = maps["position"].reshape(-1, 3)[sel] + n * (cfg.visibility_offset * vis.cell)
    dirs = refl.reshape(-1, 3)[sel]
    trans, gauss = trace_reflections(vis, start, dirs)
    hit = gauss >= 0
    l_hit = bounce.reshape(-1, 3)[sel]
    if bool(hit.any()):
        rad = hit_radiance(source, gauss[hit], dirs[hit], light, levels, lut, vis, cfg.visibility_offset, sun)
        l_hit = l_hit.index_put((hit.nonzero()[:, 0],), rad)
    ws = w.reshape(-1, 1)[sel]
    occ_sel = ws * trans[:, None] + (1 - ws) * occ.reshape(-1, 1)[sel]
    b_sel = ws * l_hit + (1 - ws) * bounce.reshape(-1, 3)[sel]
    idx = sel.nonzero()[:, 0]
    occ = occ.reshape(-1, 1).index_put((idx,), occ_sel).reshape(*shape[:-1], 1)
    bounce = bounce.reshape(-1, 3).index_put((idx,), b_sel).reshape(shape)
    return occ, bounce


def bounce_source(model: Gaussians, cfg: DistillConfig) -> BounceSource | None:
    """What a traced reflection hits (``reflection_trace``; None when off): the model's Gaussians with their
    current material, so that the hit's material trains too."""
    if not cfg.reflection_trace:
        return None
    return BounceSource(model.means.detach(), shortest_axes(model.quats.detach(), model.params["scales"].detach()),
                        model.pbr("albedo"), model.pbr("roughness"), model.pbr("metallic"))


def _sun_term(maps: dict, albedo: torch.Tensor, rough: torch.Tensor, metal: torch.Tensor, vis: VisibilityGrid | None,
              sun: Sun, cfg: DistillConfig) -> torch.Tensor:
    """The sun's radiance (H, W, 3), shadowed by a ray marched from just off the surface (as the SH visibility
    is read: ``visibility_offset`` cells out along the normal)."""
    n = maps["normal"].reshape(-1, 3)
    if vis is None:
        shadow = torch.ones(n.shape[0], device=n.device)
    else:
        start = maps["position"].reshape(-1, 3) + n * (cfg.visibility_offset * vis.cell)
        shadow = vis.transmittance(start, sun.direction)
    out = sun_radiance(albedo.reshape(-1, 3), rough.reshape(-1), metal.reshape(-1), n,
                       maps["view"].reshape(-1, 3), sun, shadow)
    return out.reshape(maps["normal"].shape)


def _physical_term_on(stage: int, cfg: DistillConfig) -> bool:
    """Whether the loss scores I_phy on its own (``physical_weight``). Never in stage 2 (its specular fit is the
    method's own), nor in (a), whose blend is I_phy already: the term would only double its image loss."""
    return stage >= 3 and cfg.physical_weight > 0 and cfg.variant != "direct"


def composite(img: torch.Tensor, coverage: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    return img * coverage + (1 - coverage) * background


def light_grey_loss(light: EnvironmentLight) -> torch.Tensor:
    """Mean absolute deviation of each channel from the texel's channel mean: pushes light to grey."""
    rad = light.cube()
    return (rad - rad.mean(-1, keepdim=True)).abs().mean()


def distill_loss(maps: dict, sh: dict, cam: Camera, bg: torch.Tensor, light: EnvironmentLight, stage: int,
                 cfg: DistillConfig, orientation: AlbedoOrientation | None = None,
                 targets: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration's loss (DESIGN.md §3 plus the project's terms) and the composited image it scored.
    ``orientation``: the running moments of the ``albedo_orientation_weight`` and ``light_orientation_weight``
    terms, updated here (only the light's is on by default; turn on one of the two: each adds the view's moments).
    ``targets``: (background colour, the view over it) pairs whose image losses are averaged (``paired_background``);
    None: ``[(bg, cam.image)]``. The image returned is over ``bg``."""
    targets = targets or [(bg, cam.image)]

    def scored(rendered: torch.Tensor) -> torch.Tensor:
        return sum(image_loss(composite(rendered, maps["coverage"], colour), target, cfg.ssim_weight)
                   for colour, target in targets) / len(targets)

    img = composite(sh["blend"], maps["coverage"], bg)
    loss = scored(sh["blend"])
    if cfg.normal_weight > 0:
        term = normal_consistency(maps["normal"], maps["coverage"], maps["depth"], cam)
        if term is not None:
            loss = loss + cfg.normal_weight * term
    if stage >= 3 and cfg.variant != "no_losses":
        target = cam.mask[..., None] if (cam.mask is not None and not cfg.real_scene) else None
        splat_progress = sh["progress"] * maps["coverage"]
        if target is None:
            target = maps["coverage"].detach()  # real scenes: progress 1 wherever there is surface
        loss = loss + cfg.mask_weight * ((splat_progress - target) ** 2).mean()
        if not cfg.known_light:  # a known light's colour is the map's, not a prior's
            loss = loss + cfg.light_weight * light_grey_loss(light)
    if stage >= 3 and cfg.albedo_smooth_weight > 0:
        loss = loss + cfg.albedo_smooth_weight * edge_aware_smoothness(maps["albedo"], maps["coverage"], cam.image)
    if cfg.material_smooth_weight > 0 and stage >= cfg.material_smooth_stage:
        channels = ("roughness", "metallic") if stage >= 3 else ("roughness",)  # stage 2's metallic is fixed
        # One call for both maps: the term sums over channels, and the image's edge weights are computed once.
        values = torch.cat([maps[name] for name in channels], -1)
        loss = loss + cfg.material_smooth_weight * edge_aware_smoothness(values, maps["coverage"], cam.image)
    if stage >= 3 and cfg.metal_albedo_smooth_weight > 0:
        metal = maps["metallic"].detach()[..., 0] ** cfg.metal_albedo_power
        loss = loss + cfg.metal_albedo_smooth_weight * edge_aware_smoothness(
            maps["albedo"], maps["coverage"], cam.image, sharpness=0.0, weight=metal)
    if stage >= 3 and cfg.albedo_orientation_weight > 0 and orientation is not None:
        loss = loss + cfg.albedo_orientation_weight * orientation.step(maps["albedo"], maps["normal"],
                                                                       maps["coverage"])
    if (stage >= 3 and cfg.light_orientation_weight > 0 and orientation is not None and not cfg.known_light
            and not cfg.real_scene):
        loss = loss + cfg.light_orientation_weight * light_orientation(maps, light, orientation)
    if stage >= 3 and cfg.metallic_weight > 0:
        loss = loss + cfg.metallic_weight * metallic_prior(maps, cfg.metallic_prior_power)
    if _physical_term_on(stage, cfg):
        # The blend hands the physical branch only the progress's share of the image loss (and relighting
        # shows I_phy alone): this scores I_phy against the image directly, whatever the progress.
        phy = sh.get("phy_display_fixed_light", sh["phy_display"])
        loss = loss + cfg.physical_weight * scored(phy)
    return loss, img


def _surface_bounds(model: Gaussians) -> tuple[np.ndarray, np.ndarray]:
    """Box around the opaque Gaussians, ignoring stray floaters (0.5 / 99.5 percentiles, 5 % margin)."""
    m = model.means.detach().numpy()
    solid = m[model.opacities.detach().numpy() > 0.3]
    if len(solid) < 16:
        solid = m
    lo, hi = np.percentile(solid, 0.5, axis=0), np.percentile(solid, 99.5, axis=0)
    pad = 0.05 * (hi - lo).max()
    return lo - pad, hi + pad


def _optimizers(model: Gaussians, light: EnvironmentLight, cfg: DistillConfig, extent: float) -> dict:
    lrs = {
        "means": cfg.lr_means * extent, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
        "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN, "albedo": cfg.lr_albedo,
        "roughness": cfg.lr_roughness, "metallic": cfg.lr_metallic, "progress": cfg.lr_progress,
    }
    opt = {k: torch.optim.Adam([model.params[k]], lr=lr, eps=1e-15) for k, lr in lrs.items()}
    opt["light"] = torch.optim.Adam(light.parameters(), lr=cfg.lr_light)
    return opt


def _set_stage_lrs(opt: dict, stage: int, cfg: DistillConfig, held: bool) -> None:
    """Which parameters learn in which stage (DESIGN.md §3)."""
    # Each (stage-2 rate, rate from stage 3 on; None: the same) pair.
    for name, base, late in (("albedo", cfg.lr_albedo, cfg.lr_albedo_stage34),
                             ("roughness", cfg.lr_roughness, cfg.lr_roughness_stage34),
                             ("quats", cfg.lr_quats, cfg.lr_quats_stage34),
                             ("light", cfg.lr_light, cfg.lr_light_stage34)):
        opt[name].param_groups[0]["lr"] = base if stage == 2 or late is None else late
    if stage == 4 and (cfg.real_scene or cfg.freeze_light_stage4):
        opt["light"].param_groups[0]["lr"] = 0.0
    late_metal = cfg.lr_metallic if cfg.lr_metallic_stage4 is None else cfg.lr_metallic_stage4
    opt["metallic"].param_groups[0]["lr"] = {2: 0.0, 4: late_metal}.get(stage, cfg.lr_metallic)
    progress_lr = {2: cfg.lr_progress_stage2, 4: cfg.lr_progress_stage4}.get(stage, cfg.lr_progress)
    opt["progress"].param_groups[0]["lr"] = 0.0 if cfg.variant == "direct" else progress_lr
    opt["opacities"].param_groups[0]["lr"] = 0.0 if held else cfg.lr_opacities


def initial_light(cfg: DistillConfig) -> EnvironmentLight:
    """The light stage 2 starts from: the known environment if there is one, else a uniform grey."""
    if not cfg.known_light:
        return EnvironmentLight(cfg.light_resolution)
    path = Path(cfg.known_light)
    try:
        img = read_image(path)
    except (OSError, ValueError, RuntimeError) as e:  # missing, not HDR/EXR, or corrupt (OpenEXR)
        raise ValueError(f"known light {path}: cannot read it as an HDR/EXR environment map ({e})") from e
    if img.ndim != 3 or img.shape[1] != 2 * img.shape[0] or not np.isfinite(img).all():
        raise ValueError(f"known light {path}: expected a finite equirectangular map (width = 2 x height), "
                         f"got shape {img.shape}")
    return EnvironmentLight(cfg.light_resolution, init=rotated_environment(img, cfg.known_light_rotation))


def _gain_only(grad: torch.Tensor) -> torch.Tensor:
    """A known light's log-radiance learns one offset per channel: every texel gets the channel's mean
    gradient, so Adam moves them all alike and the map keeps its shape (a gain, no extra parameter)."""
    return grad.mean(dim=(0, 1, 2), keepdim=True).expand_as(grad)


def _reset_param(model: Gaussians, opt: dict, name: str, value: float) -> None:
    """Set a sigmoid-activated material channel to ``value`` everywhere and forget its Adam moments."""
    with torch.no_grad():
        model.params[name].fill_(math.log(value / (1 - value)))
    _forget_moments(model, opt, (name,))


def _forget_moments(model: Gaussians, opt: dict, names: tuple[str, ...]) -> None:
    """Zero Adam's moments of parameters that were just edited, so stale momentum does not undo the edit."""
    for k in names:
        st = opt[k].state.get(model.params[k])
        if st:
            st["exp_avg"].zero_()
            st["exp_avg_sq"].zero_()


def _propagate_normals(model: Gaussians, opt: dict) -> None:
    """3DGS-DR's trick: raise opacity, enlarge reflective Gaussians' two larger axes, jitter the rest's colour.

    Opaque, wider reflective Gaussians occlude their neighbours, so the normals that explain a reflection
    spread over the surface instead of staying on a few Gaussians.
    """
    with torch.no_grad():
        op = model.params["opacities"]
        op.copy_(torch.maximum(op, torch.full_like(op, math.log(0.9 / 0.1))))
        reflective = model.pbr("progress")[:, 0] > 0.1
        sc = model.params["scales"]
        big = sc.argsort(dim=1)[:, 1:]
        grow = torch.zeros_like(sc).scatter_(1, big, math.log(1.5))
        sc.add_(grow * reflective[:, None])
        dc = model.params["sh0"]
        dc.add_(torch.randn_like(dc) * 0.1 * (~reflective)[:, None, None])
    _forget_moments(model, opt, ("opacities", "scales", "sh0"))


def view_backgrounds(
    cam: Camera, bg: torch.Tensor, cfg: DistillConfig, stage: int, seed: int, it: int,
) -> tuple[Camera, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]:
    """The training view, the background it is composited over, and (with the pair on, from its stage) the
    (colour, view) pairs ``distill_loss`` scores instead. Real scenes keep their own background."""
    if cfg.real_scene:
        return cam, bg, None
    if cfg.random_background:
        cam, colour = random_background(cam, bg, seed, it)
        return cam, colour, None
    if cfg.paired_background and stage >= cfg.paired_background_stage:
        return cam, bg, paired_backgrounds(cam, bg)
    return cam, bg, None


def train_distill(
    train_views: list[View],
    model: Gaussians,
    cfg: DistillConfig,
    out_dir: Path,
    progress: Progress,
    backend: str,
    background: tuple[float, float, float],
    extent: float,
    resume_state: dict | None = None,
    stop_at: int | None = None,
    seed: int = 0,
    offset: int = 0,
) -> tuple[Gaussians, EnvironmentLight, VisibilityGrid | None, dict]:
    """Run stages 2-4 after stage 1 (or resume inside them). Iterations count from 1 across the stages;
    progress events add ``offset`` (stage 1's iterations) so the job shows one running count."""
    ckpt_path = out_dir / "checkpoint.pt"
    cams = [Camera.from_view(v) for v in train_views]
    bg = torch.tensor(background, dtype=torch.float32)
    lut = get_brdf_lut()
    torch.manual_seed(seed + 2)
    orientation = AlbedoOrientation()
    if resume_state is not None:
        model = Gaussians(resume_state["params"])
        model.oriented = bool(resume_state.get("oriented", False))
        light = EnvironmentLight(cfg.light_resolution)
        light.load_state_dict(resume_state["light"])
        it0, order, cursor = resume_state["iteration"], resume_state["order"], resume_state["cursor"]
        vis = VisibilityGrid(**resume_state["visibility"]) if resume_state.get("visibility") else None
        elapsed0 = resume_state.get("elapsed", 0.0)
        if resume_state.get("orientation"):
            orientation.load_state_dict(resume_state["orientation"])
    else:
        if not model.has_pbr:
            model.add_pbr(progress=cfg.progress_init)
        light = initial_light(cfg)
        it0, order, cursor, vis, elapsed0 = 0, [], 0, None, 0.0
    if cfg.known_light:
        light.log_radiance.register_hook(_gain_only)
    opt = _optimizers(model, light, cfg, extent)
    if resume_state is not None:
        for k, o in opt.items():
            o.load_state_dict(resume_state["optim"][k])
    hold_until = resume_state.get("hold_until", 0) if resume_state else 0

    def checkpoint(it: int, elapsed: float) -> None:
        save_checkpoint(ckpt_path, {
            "stage": cfg.stage_of(max(it, 1)), "distill": True, "iteration": it, "params": model.state_dict(),
            "light": light.state_dict(), "optim": {k: o.state_dict() for k, o in opt.items()},
            "visibility": dataclasses.asdict(vis) if vis is not None else None, "order": list(order), "cursor": cursor,
            "hold_until": hold_until, "elapsed": elapsed, "orientation": orientation.state_dict(),
            "oriented": model.oriented,
        })
        progress.emit("checkpoint", stage=cfg.stage_of(max(it, 1)), iteration=offset + it, path=str(ckpt_path))

    t_start = time.time()
    it = it0
    ema = None
    with StopFlag() as flag:
        for it in range(it0 + 1, cfg.total + 1):
            stage = cfg.stage_of(it)
            if stage >= 3 and vis is None:
                t0 = time.time()
                with torch.no_grad():
                    vis = bake_visibility(
                        model.means.detach(), model.scales.detach(), model.quats.detach(),
                        model.opacities.detach(), resolution=cfg.visibility_resolution,
                        bounds=_surface_bounds(model), owners=cfg.reflection_trace,
                    )
                progress.emit("visibility", stage=3, iteration=offset + it, seconds=round(time.time() - t0, 1),
                              resolution=cfg.visibility_resolution)
                for name, value in (("metallic", cfg.metallic_stage3), ("roughness", cfg.roughness_stage3)):
                    if value is not None:
                        _reset_param(model, opt, name, value)
            if cfg.orient_every and (it - 1) % cfg.orient_every == 0:
                t0 = time.time()
                turned = orient_normals(model, cams, backend, opt["quats"])
                progress.emit("orient", stage=stage, iteration=offset + it, turned=turned,
                              seconds=round(time.time() - t0, 1))
            if stage == 2 and cfg.propagate_every and it % cfg.propagate_every == 0 and it < cfg.stage2:
                _propagate_normals(model, opt)
                hold_until = it + cfg.propagate_hold
            _set_stage_lrs(opt, stage, cfg, held=it <= hold_until)
            if cursor >= len(order):
                order = torch.randperm(len(cams)).tolist()
                cursor = 0
            cam = cams[order[cursor]]
            cursor += 1
            cam, view_bg, targets = view_backgrounds(cam, bg, cfg, stage, seed, it)
            maps = render_pbr_maps(model, cam, cfg.sh_degree, backend,
                                   raw_fixed_geometry=stage <= cfg.raw_fixed_geometry,
                                   depth_spread=cfg.distortion_weight > 0)
            sky, sun = trained_environment(light, cfg)
            source = bounce_source(model, cfg) if stage >= 3 else None
            sh = shade_maps(maps, sky, lut, vis, stage, cfg, sun, source)
            loss, img = distill_loss(maps, sh, cam, view_bg, light, stage, cfg, orientation, targets)
            if cfg.flatten_weight > 0:
                loss = loss + cfg.flatten_weight * flatten_loss(model.params["scales"])
            if cfg.distortion_weight > 0:
                loss = loss + cfg.distortion_weight * depth_distortion(
                    maps["depth_spread"], maps["coverage"], maps["depth"], maps["depth_ref"])
            loss.backward()
            for o in opt.values():
                o.step()
                o.zero_grad(set_to_none=True)
            lv = loss.item()
            if not math.isfinite(lv):
                raise FloatingPointError(f"loss became {lv} at distillation iteration {it}")
            pv = psnr(img.detach(), cam.image)
            ema = (lv, pv) if ema is None else (0.9 * ema[0] + 0.1 * lv, 0.9 * ema[1] + 0.1 * pv)
            now = time.time()
            if it % cfg.log_every == 0 or it == cfg.total:
                per_it = (now - t_start) / (it - it0)
                progress.emit(
                    "progress", stage=stage, iteration=offset + it, iterations=offset + cfg.total,
                    loss=round(ema[0], 5),
                    psnr=round(ema[1], 3), gaussians=len(model),
                    progress_mean=round(model.pbr("progress").mean().item(), 4),
                    elapsed_s=round(elapsed0 + now - t_start, 1), eta_s=round(per_it * (cfg.total - it), 1),
                )
            if it % cfg.checkpoint_every == 0 or flag.stop or it == stop_at:
                checkpoint(it, elapsed0 + now - t_start)
            if flag.stop:
                raise Cancelled(f"stopped at distillation iteration {it}; resume with --resume")
            if it == stop_at:
                progress.emit("paused", stage=stage, iteration=offset + it)
                break
    if it % cfg.checkpoint_every != 0 and it != stop_at:
        checkpoint(it, elapsed0 + time.time() - t_start)
    info = {"iteration": it, "seconds": elapsed0 + time.time() - t_start, "finished": it >= cfg.total}
    return model, light, vis, info


def load_distill_state(path: Path) -> dict | None:
    """The checkpoint if it is from stages 2-4, else None."""
    state = load_checkpoint(path)
    return state if state.get("distill") else None


