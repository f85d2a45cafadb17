// The 3D viewer: three.js (unpacked from npm by the install step), the textured GLB with orbit
// and zoom, and the collision parts as a distinct, see-through orange overlay.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { STLLoader } from "three/addons/loaders/STLLoader.js";

export function createViewer(container) {
  // preserveDrawingBuffer: the canvas can be read back (screenshots, the tests' pixel checks).
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  renderer.outputColorSpace = THREE.SRGBColorSpace;
  container.replaceChildren(renderer.domElement);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0x2a3140);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x445566, 2.2));
  const sun = new THREE.DirectionalLight(0xffffff, 1.6);
  sun.position.set(2, 3, 4);
  scene.add(sun);
  const camera = new THREE.PerspectiveCamera(40, 1, 0.001, 1000);
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.listenToKeyEvents(container);
  const root = new THREE.Group();  // the files' frame; turned so that their up axis is up
  scene.add(root);
  let model = null, collision = null, home = null;
  // Bumped by each showModel: a parse that ends after a later model began (another job was
  // opened meanwhile) is dropped, as is a collision overlay meant for an earlier model.
  let generation = 0;

  const render = () => renderer.render(scene, camera);
  controls.addEventListener("change", render);
  function resize() {
    const w = container.clientWidth || 640, h = container.clientHeight || 460;
    renderer.setSize(w, h);
    camera.aspect = w / h;
    camera.updateProjectionMatrix();
    render();
  }
  new ResizeObserver(resize).observe(container);

  function fit() {
    const box = new THREE.Box3().setFromObject(root);
    const size = box.getSize(new THREE.Vector3()).length() || 1;
    const centre = box.getCenter(new THREE.Vector3());
    controls.target.copy(centre);
    camera.near = size / 100; camera.far = size * 100;
    camera.position.copy(centre).add(new THREE.Vector3(0.6, 0.45, 1).normalize().multiplyScalar(size * 1.4));
    camera.updateProjectionMatrix();
    controls.update();
    home = { position: camera.position.clone(), target: controls.target.clone() };
    render();
  }

  function clear(object) {
    if (!object) return;
    root.remove(object);
    object.traverse(o => { o.geometry?.dispose(); [].concat(o.material || []).forEach(m => m.dispose()); });
  }

  async function showModel(buffer, upAxis = "y") {
    const mine = ++generation;
    const gltf = await new GLTFLoader().parseAsync(buffer, "");
    if (mine !== generation) return;
    clear(model); clear(collision); collision = null;
    model = gltf.scene;
    root.rotation.set(upAxis === "z" ? -Math.PI / 2 : 0, 0, 0);
    root.add(model);
    resize();
    fit();
  }

  async function setCollision(buffer, kind) {
    const mine = generation;
    clear(collision); collision = null;
    const material = new THREE.MeshBasicMaterial({ color: 0xff5a1f, transparent: true, opacity: 0.5, depthWrite: false, side: THREE.DoubleSide });
    const edges = new THREE.LineBasicMaterial({ color: 0xffd0b0 });
    const group = new THREE.Group();
    const addMesh = geometry => { group.add(new THREE.Mesh(geometry, material)); group.add(new THREE.LineSegments(new THREE.EdgesGeometry(geometry, 20), edges)); };
    if (kind === "stl") addMesh(new STLLoader().parse(buffer));
    else (await new GLTFLoader().parseAsync(buffer, "")).scene.traverse(o => { if (o.isMesh) { o.updateWorldMatrix(true, false); addMesh(o.geometry.clone().applyMatrix4(o.matrixWorld)); } });
    if (mine !== generation) { clear(group); return; }
    clear(collision);  // another setCollision for this model may have ended meanwhile
    group.visible = false;
    collision = group;
    root.add(group);
    render();
  }

  function showCollision(visible) { if (collision) { collision.visible = visible; render(); } }
  function reset() { if (home) { camera.position.copy(home.position); controls.target.copy(home.target); controls.update(); render(); } }
  return { showModel, setCollision, showCollision, reset };
}
