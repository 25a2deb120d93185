"""Bring a run's results into Blender: the mesh with its PBR material, the recovered World, the capture's
cameras and a preview of the Gaussians.

Reads only the hand-off folder (docs/handoff.md): ``manifest.json``, ``cameras.json``, ``point_cloud.ply``,
``environment.exr``, ``mesh.ply`` and its ``mesh_*.png`` textures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from . import ply

SENSOR_WIDTH_MM = 36.0


class ImportError_(ValueError):
    """The folder cannot be imported; the message is for the user."""


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ImportError_(f"{path.parent} is not a reconstruction output folder (no manifest.json)") from exc
    except (OSError, ValueError) as exc:
        raise ImportError_(f"{path} cannot be read: {exc}") from exc
    if data.get("format") != "prd-output":
        raise ImportError_(f"{path} is not a prd manifest")
    return data


def camera_intrinsics(rec: dict) -> dict:
    """Blender camera settings reproducing a pinhole camera (fx, cx, cy in pixels, pixel centres at +0.5).

    The sensor fit is horizontal, so the focal length and both shifts are in units of the image width
    (Blender measures shift in units of the fitted sensor dimension). OpenCV's v axis points down,
    Blender's shift_y up, hence the opposite signs.
    """
    w, h = float(rec["width"]), float(rec["height"])
    return {
        "sensor_fit": "HORIZONTAL",
        "sensor_width": SENSOR_WIDTH_MM,
        "lens": float(rec["fx"]) * SENSOR_WIDTH_MM / w,
        "shift_x": (w / 2.0 - float(rec["cx"])) / w,
        "shift_y": (float(rec["cy"]) - h / 2.0) / w,
    }


def _collection(name: str, parent: bpy.types.Collection) -> bpy.types.Collection:
    coll = bpy.data.collections.new(name)
    parent.children.link(coll)
    return coll


def import_cameras(out_dir: str | Path, parent: bpy.types.Collection, scene: bpy.types.Scene | None = None,
                   set_resolution: bool = True) -> list[bpy.types.Object]:
    """One Blender camera per view of ``cameras.json``, in a new collection under ``parent``."""
    path = Path(out_dir) / "cameras.json"
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["cameras"]
    except (OSError, ValueError, KeyError) as exc:
        raise ImportError_(f"{path} cannot be read: {exc}") from exc
    coll = _collection("Cameras", parent)
    objs = []
    for rec in records:
        name = Path(rec.get("name", "view")).stem or "view"
        cam = bpy.data.cameras.new(name)
        for key, value in camera_intrinsics(rec).items():
            setattr(cam, key, value)
        cam.display_size = 0.2
        obj = bpy.data.objects.new(name, cam)
        obj.matrix_world = Matrix(rec["cam_to_world_blender"])
        # Keep what Blender cannot hold per camera (image size, file, split) for later tools.
        obj["prd_width"], obj["prd_height"] = int(rec["width"]), int(rec["height"])
        obj["prd_split"] = str(rec.get("split", ""))
        obj["prd_image"] = str(rec.get("image", ""))
        coll.objects.link(obj)
        objs.append(obj)
    if set_resolution and scene is not None and records:
        # Render resolution is per scene in Blender; use the training views' size (same for all views).
        scene.render.resolution_x = int(records[0]["width"])
        scene.render.resolution_y = int(records[0]["height"])
        scene.render.pixel_aspect_x = 1.0
        scene.render.pixel_aspect_y = float(records[0]["fx"]) / float(records[0]["fy"])
        scene.render.resolution_percentage = 100
    return objs


def _set_attribute(mesh: bpy.types.Mesh, name: str, values: np.ndarray) -> None:
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim == 1:
        attr = mesh.attributes.new(name, "FLOAT", "POINT")
        attr.data.foreach_set("value", values.ravel())
    elif values.shape[1] == 3 and name in ("color", "albedo"):
        attr = mesh.attributes.new(name, "FLOAT_COLOR", "POINT")
        rgba = np.concatenate([values, np.ones((len(values), 1), np.float32)], 1)
        attr.data.foreach_set("color", rgba.ravel())
    else:
        attr = mesh.attributes.new(name, "FLOAT_VECTOR", "POINT")
        attr.data.foreach_set("vector", values.ravel())


def _preview_material() -> bpy.types.Material:
    """Emission of the 'color' attribute: shows the radiance field's colour in Material/Rendered view."""
    mat = bpy.data.materials.new("PRD Gaussians Preview")
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True  # always on (and deprecated) from Blender 5.0
    nt = mat.node_tree
    nt.nodes.clear()
    attr = nt.nodes.new("ShaderNodeAttribute")
    attr.attribute_name = "color"
    emit = nt.nodes.new("ShaderNodeEmission")
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    nt.links.new(attr.outputs["Color"], emit.inputs["Color"])
    nt.links.new(emit.outputs["Emission"], out.inputs["Surface"])
    return mat


def _points_modifier(obj: bpy.types.Object, mat: bpy.types.Material) -> None:
    """Geometry Nodes: vertices -> points sized by each Gaussian's largest axis, so the object is visible
    (a vertex-only mesh shows nothing in Object Mode) and keeps its attributes for shading."""
    tree = bpy.data.node_groups.new("PRD Gaussians to Points", "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    n = tree.nodes
    gin, gout = n.new("NodeGroupInput"), n.new("NodeGroupOutput")
    to_points = n.new("GeometryNodeMeshToPoints")
    radius = n.new("GeometryNodeInputNamedAttribute")
    radius.data_type = "FLOAT"
    radius.inputs["Name"].default_value = "radius"
    set_mat = n.new("GeometryNodeSetMaterial")
    set_mat.inputs["Material"].default_value = mat
    tree.links.new(gin.outputs[0], to_points.inputs["Mesh"])
    tree.links.new(radius.outputs["Attribute"], to_points.inputs["Radius"])
    tree.links.new(to_points.outputs["Points"], set_mat.inputs["Geometry"])
    tree.links.new(set_mat.outputs["Geometry"], gout.inputs[0])
    mod = obj.modifiers.new("Gaussians to Points", "NODES")
    mod.node_group = tree


def import_gaussians(out_dir: str | Path, parent: bpy.types.Collection, ply_name: str = "point_cloud.ply",
                     points_modifier: bool = True) -> bpy.types.Object:
    """The Gaussians as a vertex mesh with per-point attributes (color, opacity, radius, PBR when present)."""
    path = Path(out_dir) / ply_name
    try:
        attrs = ply.gaussian_attributes(ply.read_vertices(path))
    except FileNotFoundError as exc:
        raise ImportError_(f"{path} does not exist yet: the run has not finished") from exc
    except (OSError, ply.PlyError) as exc:
        raise ImportError_(str(exc)) from exc
    pos = attrs.pop("position")
    mesh = bpy.data.meshes.new("PRD Gaussians")
    mesh.vertices.add(len(pos))
    mesh.vertices.foreach_set("co", pos.ravel())
    for name, values in attrs.items():
        _set_attribute(mesh, name, values)
    mesh.update()
    obj = bpy.data.objects.new("PRD Gaussians", mesh)
    parent.objects.link(obj)
    if points_modifier:
        mat = _preview_material()
        mesh.materials.append(mat)
        _points_modifier(obj, mat)
    return obj


UV_MAP = "UVMap"  # the name Blender gives a first UV map; the Normal Map node and the glTF exporter use it


def _image(path: Path, colorspace: str) -> bpy.types.Image:
    image = bpy.data.images.load(str(path), check_existing=True)
    image.colorspace_settings.name = colorspace
    return image


def pbr_material(name: str, albedo: Path, orm: Path | None, normal: Path | None) -> bpy.types.Material:
    """A Principled BSDF wired the way glTF expects (DESIGN.md §4), so Blender's glTF exporter maps it to
    baseColorTexture, metallicRoughnessTexture and normalTexture without baking:
    albedo (sRGB) -> Base Color; ORM (Non-Color) -> Separate Color, G -> Roughness, B -> Metallic;
    normal (Non-Color) -> Normal Map (tangent space, UV map) -> Normal."""
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True
    nt = mat.node_tree
    nodes, links = nt.nodes, nt.links
    nodes.clear()
    bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.location = (300, 300)
    out = nodes.new("ShaderNodeOutputMaterial")
    out.location = (650, 300)
    links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    tex = nodes.new("ShaderNodeTexImage")
    tex.name = tex.label = "Albedo"
    tex.image = _image(albedo, "sRGB")
    tex.location = (-400, 500)
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if orm is not None:
        tex = nodes.new("ShaderNodeTexImage")
        tex.name = tex.label = "ORM"
        tex.image = _image(orm, "Non-Color")
        tex.location = (-400, 200)
        sep = nodes.new("ShaderNodeSeparateColor")
        sep.mode = "RGB"
        sep.location = (-80, 200)
        links.new(tex.outputs["Color"], sep.inputs["Color"])
        links.new(sep.outputs["Green"], bsdf.inputs["Roughness"])
        links.new(sep.outputs["Blue"], bsdf.inputs["Metallic"])
    if normal is not None:
        tex = nodes.new("ShaderNodeTexImage")
        tex.name = tex.label = "Normal"
        tex.image = _image(normal, "Non-Color")
        tex.location = (-400, -100)
        nmap = nodes.new("ShaderNodeNormalMap")
        nmap.space = "TANGENT"
        nmap.uv_map = UV_MAP
        nmap.location = (-80, -100)
        links.new(tex.outputs["Color"], nmap.inputs["Color"])
        links.new(nmap.outputs["Normal"], bsdf.inputs["Normal"])
    return mat


def import_mesh(out_dir: str | Path, parent: bpy.types.Collection, manifest: dict | None = None) -> bpy.types.Object:
    """``mesh.ply`` (world space, Z up, per-vertex normals and UVs) as a smooth-shaded mesh object with the
    baked textures in a glTF-friendly Principled BSDF material.

    Built from the PLY rather than through the glTF importer: the PLY is already in Blender's world frame
    (no Y-up round trip), it keeps the baker's exact vertex normals (the normal map's tangent frame is
    derived from them), and it works whether or not the glTF add-on is enabled.
    """
    out_dir = Path(out_dir)
    manifest = manifest if manifest is not None else read_manifest(out_dir)
    files = manifest.get("files", {})
    if "mesh" not in files:
        raise ImportError_(f"{out_dir}: the run has no mesh yet (build it with Build Mesh, or `prd mesh`)")
    try:
        v, tris = ply.read_mesh(out_dir / files["mesh"])
    except FileNotFoundError as exc:
        raise ImportError_(f"{out_dir / files['mesh']} is missing") from exc
    except (OSError, ply.PlyError) as exc:
        raise ImportError_(str(exc)) from exc
    names = set(v.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise ImportError_(f"{out_dir / files['mesh']}: vertices have no x, y, z")
    nv, nf = len(v), len(tris)
    mesh = bpy.data.meshes.new(f"PRD Mesh ({out_dir.name or 'result'})")
    mesh.vertices.add(nv)
    mesh.vertices.foreach_set("co", np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32).ravel())
    mesh.loops.add(3 * nf)
    mesh.loops.foreach_set("vertex_index", tris.astype(np.int32).ravel())
    mesh.polygons.add(nf)
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * nf, 3, dtype=np.int32))
    mesh.polygons.foreach_set("use_smooth", np.ones(nf, dtype=bool))
    if {"s", "t"} <= names:
        uv = mesh.uv_layers.new(name=UV_MAP)
        st = np.stack([v["s"], v["t"]], 1).astype(np.float32)
        uv.data.foreach_set("uv", st[tris.ravel()].ravel())
    mesh.update()
    mesh.validate(clean_customdata=False)
    if {"nx", "ny", "nz"} <= names:
        normals = np.stack([v["nx"], v["ny"], v["nz"]], 1).astype(np.float64)
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        if (length > 0.5).all():
            mesh.normals_split_custom_set_from_vertices((normals / length).tolist())
    obj = bpy.data.objects.new(f"PRD Mesh ({out_dir.name or 'result'})", mesh)
    parent.objects.link(obj)
    albedo = files.get("texture_albedo")
    if albedo and (out_dir / albedo).is_file():
        orm, normal = files.get("texture_orm"), files.get("texture_normal")
        mesh.materials.append(pbr_material(
            f"PRD Material ({out_dir.name or 'result'})", out_dir / albedo,
            out_dir / orm if orm and (out_dir / orm).is_file() else None,
            out_dir / normal if normal and (out_dir / normal).is_file() else None,
        ))
    obj["prd_role"] = "mesh"
    obj["prd_run"] = str(out_dir)
    return obj


def _linear_colorspace(image: bpy.types.Image) -> None:
    # The EXR holds linear radiance; name it explicitly (the default guess depends on the file and version).
    names = {item.identifier for item in image.colorspace_settings.bl_rna.properties["name"].enum_items}
    for name in ("Linear Rec.709", "Linear", "Non-Color"):
        if name in names:
            image.colorspace_settings.name = name
            return


def environment_nodes(world: bpy.types.World, image_path: str | Path, strength: float = 1.0,
                      rotation_deg: float = 0.0) -> bpy.types.World:
    """(Re)build ``world``'s nodes (DESIGN.md §4): Texture Coordinate -> Mapping (Z rotation) -> Environment
    Texture (colour space linear) -> Background -> World Output."""
    if world.node_tree is None:  # Blender < 5 creates the tree only on request
        world.use_nodes = True
    nodes, links = world.node_tree.nodes, world.node_tree.links
    nodes.clear()
    coord = nodes.new("ShaderNodeTexCoord")
    mapping = nodes.new("ShaderNodeMapping")
    mapping.inputs["Rotation"].default_value[2] = math.radians(rotation_deg)
    env = nodes.new("ShaderNodeTexEnvironment")
    env.image = bpy.data.images.load(str(image_path), check_existing=True)
    _linear_colorspace(env.image)
    bg = nodes.new("ShaderNodeBackground")
    bg.inputs["Strength"].default_value = strength
    out = nodes.new("ShaderNodeOutputWorld")
    links.new(coord.outputs["Generated"], mapping.inputs["Vector"])
    links.new(mapping.outputs["Vector"], env.inputs["Vector"])
    links.new(env.outputs["Color"], bg.inputs["Color"])
    links.new(bg.outputs["Background"], out.inputs["Surface"])
    for i, node in enumerate((coord, mapping, env, bg, out)):
        node.location = (i * 260 - 600, 0)
    return world


def import_world(out_dir: str | Path, scene: bpy.types.Scene, strength: float = 1.0,
                 rotation_deg: float = 0.0) -> bpy.types.World:
    """The recovered environment as the scene's World (DESIGN.md §4):
    Texture Coordinate -> Mapping (Z rotation) -> Environment Texture (linear) -> Background -> World Output."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    env_name = manifest.get("files", {}).get("environment")
    if not env_name or not (out_dir / env_name).is_file():
        raise ImportError_(f"{out_dir}: the run has no recovered environment map yet (train all four stages)")
    world = bpy.data.worlds.new(f"PRD Environment ({out_dir.name or 'result'})")
    environment_nodes(world, out_dir / env_name, strength, rotation_deg)
    world["prd_environment"] = str(out_dir / env_name)
    # A fake user keeps it in the .blend while Relight shows another World, so the user can switch back.
    world.use_fake_user = True
    scene.world = world
    if hasattr(scene, "prd"):
        scene.prd.recovered_world = world
    return world


def import_result(scene: bpy.types.Scene, out_dir: str | Path, cameras: bool = True, gaussians: bool = True,
                  set_camera: bool = True) -> dict:
    """Import a run into a new collection named after the output folder; returns what was made.

    The mesh (when the run has one) is the main object: selected and active. The Gaussians are then only a
    hidden preview (not rendered); without a mesh they are what there is, shown. ``set_camera`` makes a
    capture camera (a held-out one if any) the scene camera, so Relight renders frame the object.
    """
    if isinstance(scene, bpy.types.Context):  # accept a context too (older callers)
        scene = scene.scene
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    files = manifest.get("files", {})
    if gaussians and not files.get("gaussians"):
        raise ImportError_(f"{out_dir}: the run has no Gaussians yet (status: {manifest.get('status', '?')})")
    root = _collection(f"PRD {out_dir.name or 'result'}", scene.collection)
    made: dict = {"collection": root, "cameras": [], "gaussians": None, "mesh": None, "world": None}
    if files.get("mesh"):
        made["mesh"] = import_mesh(out_dir, root, manifest)
    if cameras:
        made["cameras"] = import_cameras(out_dir, root, scene)
        if set_camera and made["cameras"]:
            held_out = [c for c in made["cameras"] if c.get("prd_split") == "test"]
            scene.camera = (held_out or made["cameras"])[0]
        for cam in made["cameras"]:
            cam.hide_render = True
    if gaussians:
        made["gaussians"] = import_gaussians(out_dir, root, files["gaussians"])
        if made["mesh"]:
            made["gaussians"].hide_render = True
    if files.get("environment"):
        made["world"] = import_world(out_dir, scene)
    view_layer = _view_layer(scene)
    if view_layer is not None:
        if made["gaussians"] is not None and made["mesh"] is not None:
            made["gaussians"].hide_set(True, view_layer=view_layer)
        main = made["mesh"] or made["gaussians"]
        if main is not None:
            for obj in view_layer.objects.selected:
                obj.select_set(False, view_layer=view_layer)
            main.select_set(True, view_layer=view_layer)
            view_layer.objects.active = main
    if made["mesh"] is not None and hasattr(scene, "prd"):
        scene.prd.mesh_object = made["mesh"]
    return made


def _view_layer(scene: bpy.types.Scene) -> bpy.types.ViewLayer | None:
    ctx_layer = getattr(bpy.context, "view_layer", None)
    if ctx_layer is not None and getattr(bpy.context, "scene", None) == scene:
        return ctx_layer
    return scene.view_layers[0] if scene.view_layers else None
