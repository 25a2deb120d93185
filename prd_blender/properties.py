"""Scene properties of the Reconstruct panel (``scene.prd``): the job's settings and its live status."""

# No ``from __future__ import annotations`` here: Blender evaluates string annotations without this
# module's globals, so the dynamic enum's items callback could not find studio_light_items.
import os

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

SOURCES = [
    ("COLMAP", "COLMAP Model", "A COLMAP sparse model (binary or text), or a project folder holding one"),
    ("TRANSFORMS", "transforms.json", "A NeRF / nerfstudio / instant-ngp transforms.json, or a folder holding one"),
    ("PHOTOS", "Photo Folder", "A folder of photos: the trainer finds the camera poses first (structure from "
                               "motion with COLMAP), then reconstructs"),
    ("SCENE", "Scene Cameras", "Render every camera of the current scene with Cycles (in the background), "
                               "then reconstruct from those renders"),
]
QUALITIES = [
    ("PREVIEW", "Preview", "256 px: 2,000 radiance-field iterations, 3 x 300 material iterations"),
    ("STANDARD", "Standard", "512 px: 7,000 radiance-field iterations, 3 x 1,000 material iterations"),
    ("HIGH", "High", "Full resolution: 30,000 radiance-field iterations, 3 x 3,000 material iterations"),
    ("CUSTOM", "Custom", "Choose iterations and resolution"),
]
DEVICES = [
    ("auto", "Auto", "CUDA (gsplat) when the trainer sees an NVIDIA GPU, else the CPU backend"),
    ("cuda", "CUDA", "NVIDIA GPU through gsplat; fails when unavailable"),
    ("cpu", "CPU", "The compiled CPU backend (slower, runs everywhere)"),
]
MESH_QUALITIES = [
    ("preview", "Preview", "About 20,000 faces"),
    ("standard", "Standard", "About 100,000 faces"),
    ("high", "High", "About 300,000 faces"),
]
TEXTURE_SIZES = [("512", "512 px", ""), ("1024", "1024 px", ""), ("2048", "2048 px", "")]
LIGHT_SOURCES = [
    ("STUDIO", "Bundled", "One of the HDRIs that ship with Blender (studio lights, World)"),
    ("FILE", "File", "An equirectangular .hdr or .exr file"),
]
STATUSES = [
    ("IDLE", "Idle", ""), ("RUNNING", "Running", ""), ("CANCELLING", "Cancelling", ""),
    ("DONE", "Done", ""), ("PAUSED", "Paused", ""), ("CANCELLED", "Cancelled", ""), ("FAILED", "Failed", ""),
]


# Blender keeps only the strings of dynamic enum items that Python keeps alive: cache them.
_studio_items: list[tuple[str, str, str]] = []


def studio_lights() -> dict[str, str]:
    """Blender's bundled world HDRIs: name -> path (studiolights/world in the installation's datafiles)."""
    folder = bpy.utils.system_resource("DATAFILES", path="studiolights/world")
    if not folder or not os.path.isdir(folder):
        return {}
    return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith((".exr", ".hdr"))}


def studio_light_items() -> list[tuple[str, str, str]]:
    if not _studio_items:
        _studio_items.extend((name, name.replace("_", " ").title(), path) for name, path in studio_lights().items())
        if not _studio_items:
            _studio_items.append(("NONE", "None Found", "This Blender has no bundled world HDRIs"))
    return _studio_items


def source_problem(source: str) -> str:
    """Why a capture source cannot be used yet ("" when it can); shown by poll() and the panel."""
    return ""


class PRD_PG_job(bpy.types.PropertyGroup):
    source: EnumProperty(name="Source", items=SOURCES, default="COLMAP",
                         description="What kind of capture to reconstruct from")
    colmap_path: StringProperty(name="COLMAP", subtype="DIR_PATH",
                                description="COLMAP sparse model folder (or the project folder holding sparse/0)")
    transforms_path: StringProperty(name="transforms.json", subtype="FILE_PATH",
                                    description="transforms.json (or transforms_train.json) of the capture")
    photos_path: StringProperty(name="Photos", subtype="DIR_PATH", description="Folder of photos")
    output_dir: StringProperty(name="Output", subtype="DIR_PATH",
                               description="New or empty folder for the results (or an earlier run to resume)")
    overwrite: BoolProperty(name="Replace Earlier Run", default=False,
                            description="Replace the results of an earlier run in the output folder")
    quality: EnumProperty(name="Quality", items=QUALITIES, default="STANDARD")
    iterations: IntProperty(name="Iterations", default=7000, min=1, soft_max=60000,
                            description="Stage-1 training iterations (Custom quality, and the target of Resume)")
    distill_iterations: IntProperty(
        name="Material Iterations", default=1000, min=0, soft_max=10000,
        description="Iterations of each material/light stage (2-4) of PRD; 0 = radiance field only (Custom quality)")
    resolution: IntProperty(name="Resolution", default=512, min=0, soft_max=4096, subtype="PIXEL",
                            description="Longer image side in pixels; 0 = full resolution (Custom quality)")
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    use_known_light: BoolProperty(
        name="Known Lighting", default=False,
        description="You have an HDRI of the capture's surroundings: the trainer keeps its shape and fits only "
                    "its exposure, which pins the colours of matte surfaces that a learned light leaves uncertain")
    known_light_path: StringProperty(name="Capture HDRI", subtype="FILE_PATH",
                                     description="Equirectangular .hdr or .exr taken where the capture was "
                                                 "(Z up, Blender's convention)")
    known_light_rotation: FloatProperty(name="Rotation", subtype="ANGLE", default=0.0,
                                        description="Turn the capture HDRI about the world Z axis to line it "
                                                    "up with the capture")
    dielectric: BoolProperty(
        name="No Bare Metal", default=False,
        description="The object has no bare metal (paint, plastic, wood, stone, ceramic, fabric): the trainer keeps "
                    "metallic at 0, where one lighting cannot tell a rough metal from a matte surface")
    import_gaussians: BoolProperty(name="Gaussians Preview", default=True,
                                   description="Also import the Gaussians as a point preview object")

    build_mesh: BoolProperty(name="Build Mesh", default=True,
                             description="After training, extract a mesh and bake its PBR textures (prd mesh)")
    mesh_quality: EnumProperty(name="Mesh", items=MESH_QUALITIES, default="standard",
                               description="Mesh detail (Custom quality; presets choose it with the training)")
    texture_size: EnumProperty(name="Textures", items=TEXTURE_SIZES, default="1024",
                               description="Size of the baked textures (Custom quality)")
    auto_import: BoolProperty(name="Import When Done", default=True,
                              description="Import the result into the scene as soon as the job finishes")

    # Relight: another HDRI as World, rendered with Cycles.
    light_source: EnumProperty(name="Light", items=LIGHT_SOURCES, default="STUDIO")
    studio_light: EnumProperty(name="HDRI", items=lambda self, context: studio_light_items(),
                               description="Blender's bundled world HDRIs")
    hdri_path: StringProperty(name="HDRI File", subtype="FILE_PATH",
                              description="Equirectangular .hdr or .exr (Z up, Blender's convention)")
    light_rotation: FloatProperty(name="Rotation", subtype="ANGLE", default=0.0,
                                  description="Turn the HDRI about the world Z axis")
    light_strength: FloatProperty(name="Strength", default=1.0, min=0.0, soft_max=10.0)
    render_samples: IntProperty(name="Samples", default=64, min=1, soft_max=4096,
                                description="Cycles samples of the relit still")
    render_path: StringProperty(
        name="Render To", subtype="FILE_PATH",
        description="PNG for the relit still (empty: <output>/relight/<hdri>.png); never overwritten: a number is "
                    "appended when the file exists")
    last_render: StringProperty(name="Last Render", subtype="FILE_PATH")
    recovered_world: PointerProperty(type=bpy.types.World, name="Recovered World",
                                     description="The World made from the run's recovered environment map")
    mesh_object: PointerProperty(type=bpy.types.Object, name="Mesh",
                                 description="The reconstructed mesh (exported by Export glTF)")

    # Live status, written by the job timer (operators.poll_job); read-only in the UI.
    status: EnumProperty(name="Status", items=STATUSES, default="IDLE")
    message: StringProperty(name="Message")
    stage: IntProperty(name="Stage")
    iteration: IntProperty(name="Iteration")
    total_iterations: IntProperty(name="Iterations")
    psnr: FloatProperty(name="PSNR", precision=2)
    loss: FloatProperty(name="Loss", precision=4)
    eta_s: FloatProperty(name="Time Left", default=-1.0)
    gaussians: IntProperty(name="Gaussians")
    backend: StringProperty(name="Backend")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    log_path: StringProperty(name="Log", subtype="FILE_PATH")
    result_dir: StringProperty(name="Result", subtype="DIR_PATH")

    def capture_path(self) -> str:
        """The absolute path of the chosen capture ('' when not set)."""
        raw = {"COLMAP": self.colmap_path, "TRANSFORMS": self.transforms_path, "PHOTOS": self.photos_path}.get(
            self.source, "")
        return bpy.path.abspath(raw) if raw else ""

    def scene_capture_path(self) -> str:
        """Where the Scene Cameras source renders its capture: a sibling of the output folder (the output
        folder itself must stay empty for the trainer)."""
        out = self.output_path().rstrip("/\\")
        return out + "_scene_capture" if out else ""

    def output_path(self) -> str:
        return bpy.path.abspath(self.output_dir) if self.output_dir else ""


CLASSES = (PRD_PG_job,)


def register() -> None:
    bpy.types.Scene.prd = bpy.props.PointerProperty(type=PRD_PG_job)


def unregister() -> None:
    if hasattr(bpy.types.Scene, "prd"):
        del bpy.types.Scene.prd
