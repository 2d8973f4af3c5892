// cnnviz explorer: the page of `cnnviz serve`.
//
// Plain ES2020, no framework, no build step. Everything comes from the JSON API described in
// docs/explorer-api.md, through relative URLs. The server sets a cookie holding the token when
// the page is opened with ?token=; every URL the page requests also carries the token itself
// (withToken), because a page shown in a notebook's frame on another site gets no cookie.
// The content-security policy forbids inline scripts and inline style attributes; styles are set
// through CSS classes or the CSSOM (el.style.prop = ...), which the policy allows.
'use strict';

(() => {
  // ---------------------------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** Create an element with properties (className, textContent, ...) and children. */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('aria-') || key === 'role' || key === 'for') node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // The token of the address the page was opened with (null when the cookie alone opened it).
  const TOKEN = new URLSearchParams(window.location.search).get('token');

  /** ``url`` (relative to the page) with the token added when the page was given one. */
  function withToken(url) {
    if (!TOKEN || url.startsWith('data:') || url.startsWith('blob:')) return url;
    return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(TOKEN)}`;
  }

  /** An error whose message is the server's own ({"error": msg}). */
  class ApiError extends Error {}

  /** GET or POST a JSON endpoint; throw ApiError with the server's message on failure. */
  async function api(url, init) {
    let response;
    try {
      response = await fetch(withToken(url), init);
    } catch (err) {
      throw new ApiError(`the server cannot be reached (${err.message})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
      throw new ApiError(message);
    }
    if (body === null) throw new ApiError(`${url}: the answer is not JSON`);
    return body;
  }

  /** URL for an image's endpoint, e.g. imageUrl('abc', 'predictions', {k: 5}). */
  function imageUrl(id, endpoint, params) {
    const query = params ? `?${new URLSearchParams(params)}` : '';
    return `api/images/${encodeURIComponent(id)}/${endpoint}${query}`;
  }

  // The status line: progress and errors, never alerts.
  const status = {
    busy: 0,
    show(text, kind = 'info') {
      const line = $('status');
      line.textContent = text;
      line.className = `status ${kind}`;
    },
    error(err) {
      const message = err instanceof Error ? err.message : String(err);
      this.show(message, 'error');
    },
    clear() {
      this.show('', 'info');
    },
  };

  /** Run an async task, reporting its failure in the status line (so nothing is unhandled). */
  function run(task) {
    Promise.resolve()
      .then(task)
      .catch((err) => status.error(err));
  }

  /** Call fn at most once per `ms` of quiet (for sliders and typing). */
  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  /** Set an <img> src and resolve when it loads (or reject when it fails). */
  function loadImage(img, src) {
    return new Promise((resolve, reject) => {
      img.onload = () => resolve(img);
      img.onerror = () => reject(new ApiError(`a picture failed to load (${img.alt || src})`));
      img.src = withToken(src);
    });
  }

  const formatInt = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : String(n ?? ''));
  const formatShape = (shape) => (Array.isArray(shape) ? shape.join(' × ') : String(shape ?? ''));
  const percent = (p) => `${(100 * p).toFixed(1)}%`;

  // ---------------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------------

  const state = {
    info: null, // api/info
    classes: [], // api/classes, index order
    layers: [], // api/layers
    images: [], // api/images
    imageId: null,
    predictions: [],
    classIndex: null, // null: the predicted class
    options: {}, // the current method's option values the user changed: {name: value}
    explanation: null, // the last api/.../explanation answer
    compare: [], // [{id, params}]
    structureLoaded: false,
    activationsKey: null, // image + layer + sort of the grid on screen
  };

  const currentMethod = () =>
    state.info.methods.find((m) => m.name === $('method-select').value) || state.info.methods[0];

  const labelOf = (index) => state.classes[index] ?? `class ${index}`;

  /** A method's title as the registry gives it (api/info), else the answer's own. */
  function titleOf(answer) {
    const method = state.info.methods.find((m) => m.name === answer.method);
    return (method && method.title) || answer.title || answer.method;
  }

  /** The map parameters of the current settings (shared by explanation, map.png, faithfulness). */
  function mapParams() {
    const method = currentMethod();
    const params = { method: method.name };
    if (state.classIndex !== null) params.class = String(state.classIndex);
    const layer = $('layer-select').value;
    if (method.needs_layer && layer) params.layer = layer;
    const sign = $('sign-select').value;
    if (sign) params.sign = sign;
    const style = $('style-select').value;
    if (style) params.style = style;
    const cmap = $('cmap-select').value;
    if (cmap) params.cmap = cmap;
    params.alpha = $('alpha-input').value;
    for (const [name, value] of Object.entries(state.options)) params[`o.${name}`] = String(value);
    return params;
  }

  // ---------------------------------------------------------------------------------------------
  // Tabs
  // ---------------------------------------------------------------------------------------------

  const TABS = ['explain', 'compare', 'activations', 'structure'];
  let activeTab = 'explain';

  function selectTab(name, focus = false) {
    activeTab = name;
    for (const tab of TABS) {
      const button = $(`tab-${tab}`);
      const selected = tab === name;
      button.setAttribute('aria-selected', String(selected));
      button.tabIndex = selected ? 0 : -1;
      $(`panel-${tab}`).hidden = !selected;
      if (selected && focus) button.focus();
    }
    // The explanation settings only matter where a map is shown; the structure is the model's,
    // not the image's, so that tab takes the whole width.
    $('explain-settings').hidden = !(name === 'explain' || name === 'compare');
    $('controls').hidden = name === 'structure';
    document.querySelector('.layout').classList.toggle('full', name === 'structure');
    if (name === 'activations') run(refreshActivations);
    if (name === 'structure') run(loadStructure);
  }

  function setUpTabs() {
    TABS.forEach((name, i) => {
      const button = $(`tab-${name}`);
      button.addEventListener('click', () => selectTab(name));
      // Arrow keys move between tabs (the WAI-ARIA tabs pattern).
      button.addEventListener('keydown', (event) => {
        const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
        if (step) selectTab(TABS[(i + step + TABS.length) % TABS.length], true);
      });
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Images: the list, uploads, the input picture and the predictions
  // ---------------------------------------------------------------------------------------------

  function renderImageList() {
    const list = $('image-list');
    list.replaceChildren();
    for (const image of state.images) {
      const selected = image.id === state.imageId;
      const thumb = el('img', {
        src: withToken(imageUrl(image.id, 'input.png')),
        alt: '',
        className: 'thumb',
        loading: 'lazy',
      });
      const item = el(
        'button',
        {
          type: 'button',
          className: `image-item${selected ? ' selected' : ''}`,
          title: `${image.name} (${image.source}, ${image.width}×${image.height})`,
          role: 'option',
          'aria-selected': String(selected),
          dataset: { id: image.id },
        },
        thumb,
        el('span', { className: 'image-name', textContent: image.name }),
      );
      item.addEventListener('click', () => {
        if (image.id !== state.imageId) run(() => selectImage(image.id));
      });
      list.append(item);
    }
  }

  async function loadImages() {
    const { images } = await api('api/images');
    state.images = images;
    renderImageList();
  }

  async function upload(files) {
    for (const file of files) {
      status.show(`uploading ${file.name}…`, 'busy');
      const { image } = await api('api/images', {
        method: 'POST',
        body: file,
        headers: {
          'Content-Type': file.type || 'application/octet-stream',
          // Header values must be ISO-8859-1: a name outside printable ASCII is sent
          // percent-encoded (UTF-8), for the server to unquote.
          'X-Filename': /^[\x20-\x7e]*$/.test(file.name) ? file.name : encodeURIComponent(file.name),
        },
      });
      state.images.push(image);
      status.show(`uploaded ${image.name}`);
      await selectImage(image.id);
    }
  }

  async function selectImage(id) {
    state.imageId = id;
    state.classIndex = null; // a new image starts with its own predicted class
    $('class-input').value = '';
    renderImageList();
    const input = $('input-image');
    input.src = withToken(imageUrl(id, 'input.png'));
    const { predictions } = await api(imageUrl(id, 'predictions', { k: 5 }));
    if (state.imageId !== id) return; // another image was picked meanwhile
    state.predictions = predictions;
    renderPredictions();
    state.activationsKey = null;
    hideChannelDetail();
    await Promise.all([
      refreshExplanation(),
      refreshCompareCards(),
      activeTab === 'activations' ? refreshActivations() : null,
    ]);
  }

  function renderPredictions() {
    const list = $('predictions');
    list.replaceChildren();
    const explained = state.explanation ? state.explanation.target.index : null;
    for (const p of state.predictions) {
      const bar = el('span', { className: 'bar' });
      bar.style.width = percent(Math.max(0, Math.min(1, p.probability)));
      const item = el(
        'li',
        { className: p.index === explained ? 'explained' : '', dataset: { index: p.index } },
        el(
          'button',
          { type: 'button', title: `explain class ${p.index} (${p.label})` },
          el('span', { className: 'label', textContent: p.label }),
          el('span', { className: 'prob', textContent: percent(p.probability) }),
          el('span', { className: 'track' }, bar),
        ),
      );
      item.querySelector('button').addEventListener('click', () => {
        setClass(p.index);
        run(refreshExplanation);
      });
      list.append(item);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Explanation settings
  // ---------------------------------------------------------------------------------------------

  function fillSelect(select, entries, keepFirst = false) {
    if (!keepFirst) select.replaceChildren();
    for (const [value, text] of entries) select.append(el('option', { value, textContent: text }));
  }

  function setUpSettings() {
    const { info } = state;
    // Classes: a <datalist> of "index: label" entries for type-ahead.
    const datalist = $('class-list');
    datalist.replaceChildren(
      ...state.classes.map((label, i) => el('option', { value: `${i}: ${label}` })),
    );
    fillSelect(
      $('method-select'),
      info.methods.map((m) => [m.name, m.title || m.name]),
    );
    // The server's choice: Grad-CAM, or saliency for a model without a CAM layer (a ViT).
    const first = info.default_method || 'gradcam';
    if (info.methods.some((m) => m.name === first)) $('method-select').value = first;
    // 'auto' is the method's own sign: the select's first entry already says so.
    const signs = (info.signs || []).filter((s) => s !== 'auto');
    fillSelect($('sign-select'), signs.map((s) => [s, s]), true);
    fillSelect($('cmap-select'), (info.colormaps || []).map((c) => [c, c]), true);
    fillSelect($('style-select'), (info.styles || ['overlay']).map((s) => [s, s]));
    if ((info.styles || []).includes('overlay')) $('style-select').value = 'overlay';
    // Layers: only the spatial ones can be explained by CAMs; their shape is shown.
    const spatial = state.layers.filter((l) => l.spatial);
    const defaultName = info.default_layer ? ` (${info.default_layer})` : '';
    fillSelect($('layer-select'), [['', `automatic${defaultName}`]]);
    fillSelect(
      $('layer-select'),
      spatial.map((l) => [l.name, `${l.name} · ${l.type} · ${formatShape(l.shape)}`]),
      true,
    );
    renderMethod();

    const refresh = () => run(refreshExplanation);
    $('method-select').addEventListener('change', () => {
      state.options = {};
      renderMethod();
      refresh();
    });
    for (const id of ['layer-select', 'sign-select', 'cmap-select', 'style-select']) {
      $(id).addEventListener('change', refresh);
    }
    const slowRefresh = debounce(refresh, 250);
    $('alpha-input').addEventListener('input', () => {
      $('alpha-value').textContent = Number($('alpha-input').value).toFixed(2);
      slowRefresh();
    });
    const classInput = $('class-input');
    classInput.addEventListener('change', () => {
      if (pickClass(classInput.value)) refresh();
    });
    classInput.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') {
        event.preventDefault();
        if (pickClass(classInput.value)) refresh();
      }
    });
  }

  /** Show the class the map explains in the class input. */
  function setClass(index) {
    state.classIndex = index;
    $('class-input').value = index === null ? '' : `${index}: ${labelOf(index)}`;
  }

  /**
   * Read the class input: "123: label", "123", or a label (exact, then a unique substring).
   * Returns true when the class changed.
   */
  function pickClass(text) {
    const value = text.trim();
    let index = null;
    if (value === '') {
      index = null; // the predicted class
    } else {
      const number = /^(\d+)\s*(:.*)?$/.exec(value);
      const lower = value.toLowerCase();
      if (number) {
        index = Number(number[1]);
      } else {
        index = state.classes.findIndex((c) => c.toLowerCase() === lower);
        if (index < 0) {
          const matches = [];
          state.classes.forEach((c, i) => c.toLowerCase().includes(lower) && matches.push(i));
          if (matches.length === 1) [index] = matches;
          else {
            status.error(
              matches.length
                ? `"${value}" matches ${matches.length} classes: pick one from the list`
                : `no class is called "${value}"`,
            );
            return false;
          }
        }
      }
      if (!(index >= 0 && index < state.classes.length)) {
        status.error(`class ${index} does not exist (0 to ${state.classes.length - 1})`);
        return false;
      }
    }
    const changed = index !== state.classIndex;
    setClass(index);
    return changed;
  }

  /** The current method's summary, its options as inputs, and whether it takes a layer. */
  function renderMethod() {
    const method = currentMethod();
    $('method-summary').textContent = [method.summary, method.paper].filter(Boolean).join(' — ');
    const layer = $('layer-select');
    layer.disabled = !method.needs_layer;
    layer.title = method.needs_layer ? '' : `${method.title || method.name} does not use a layer`;
    const fieldset = $('method-options');
    fieldset.replaceChildren(el('legend', { textContent: 'Method options' }));
    const options = method.options || [];
    fieldset.hidden = options.length === 0;
    const refresh = debounce(() => run(refreshExplanation), 400);
    for (const option of options) {
      const id = `option-${option.name}`;
      const isBool = option.type === 'bool' || typeof option.default === 'boolean';
      const isNumber =
        ['int', 'float', 'number'].includes(option.type) || typeof option.default === 'number';
      const input = el('input', { id, name: option.name });
      if (isBool) {
        input.type = 'checkbox';
        input.checked = Boolean(option.default);
      } else if (isNumber) {
        input.type = 'number';
        input.step = option.type === 'int' || Number.isInteger(option.default) ? '1' : 'any';
        input.value = option.default ?? '';
      } else {
        input.type = 'text';
        input.value = option.default ?? '';
        input.placeholder = option.default === null ? 'none' : '';
      }
      // Only values that differ from the default are sent (as o.NAME=value).
      const update = () => {
        const value = isBool ? input.checked : input.value.trim();
        if (String(value) === String(option.default ?? '')) delete state.options[option.name];
        else state.options[option.name] = value;
        refresh();
      };
      input.addEventListener(isBool ? 'change' : 'input', update);
      const label = el(
        'label',
        { className: isBool ? 'check' : 'field', for: id },
        isBool ? input : el('span', { textContent: option.name }),
        isBool ? el('span', { textContent: option.name }) : input,
      );
      label.title = `${option.type || 'value'}, default ${JSON.stringify(option.default)}`;
      fieldset.append(label);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Explain: the map, its legend and colour bar, the export buttons
  // ---------------------------------------------------------------------------------------------

  let explanationSeq = 0;

  async function refreshExplanation() {
    if (state.imageId === null) return;
    const seq = ++explanationSeq;
    const method = currentMethod();
    const figure = $('map-figure');
    figure.classList.add('busy');
    status.show(`computing ${method.title || method.name}…`, 'busy');
    try {
      const answer = await api(imageUrl(state.imageId, 'explanation', mapParams()));
      if (seq !== explanationSeq) return; // a newer request superseded this one
      await Promise.all([
        loadImage($('map-image'), answer.image),
        answer.colorbar ? loadImage($('colorbar'), answer.colorbar) : null,
      ]);
      if (seq !== explanationSeq) return;
      state.explanation = answer;
      showExplanation(answer);
      status.show(`${titleOf(answer)}: ${answer.target.label}`);
    } finally {
      if (seq === explanationSeq) figure.classList.remove('busy');
    }
  }

  function showExplanation(answer) {
    const { target } = answer;
    $('map-image').alt = `${titleOf(answer)} map for ${target.label}`;
    $('colorbar').hidden = !answer.colorbar;
    const predicted = state.predictions.length && state.predictions[0].index === target.index;
    $('target').replaceChildren(
      el('strong', { textContent: titleOf(answer) }),
      ` explains class ${target.index} `,
      el('strong', { textContent: target.label }),
      ` (${predicted ? 'predicted, ' : ''}probability ${percent(target.probability)})`,
      answer.layer ? ` at layer ${answer.layer}` : '',
    );
    $('legend').textContent = answer.legend || '';
    // Signed maps (sign "all") are always drawn in the diverging colour map.
    $('cmap-hint').hidden = answer.sign !== 'all';
    const seconds = typeof answer.seconds === 'number' ? `${answer.seconds.toFixed(2)} s` : '';
    $('timing').textContent = `${seconds}${answer.cached ? ' (cached)' : ''}`;
    $('command').value = answer.command || '';
    const image = state.images.find((i) => i.id === state.imageId);
    const stem = (image ? image.name : 'image').replace(/\.[^.]*$/, '').replace(/[^\w.-]+/g, '_');
    const link = $('export-png');
    link.href = withToken(answer.image);
    link.download = `${stem}-${answer.method}-${target.index}.png`;
    renderPredictions();
  }

  function setUpExport() {
    $('export-png').addEventListener('click', (event) => {
      if (!state.explanation) {
        event.preventDefault();
        status.error('no map yet');
      }
    });
    $('export-manifest').addEventListener('click', () => {
      const answer = state.explanation;
      if (!answer) {
        status.error('no map yet');
        return;
      }
      const blob = new Blob([`${JSON.stringify(answer.manifest, null, 2)}\n`], {
        type: 'application/json',
      });
      const url = URL.createObjectURL(blob);
      const link = el('a', { href: url, download: $('export-png').download.replace(/png$/, 'json') });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
    $('copy-command').addEventListener('click', () => run(copyCommand));
  }

  async function copyCommand() {
    const field = $('command');
    if (!field.value) {
      status.error('no command yet');
      return;
    }
    try {
      await navigator.clipboard.writeText(field.value);
      status.show('copied the command');
    } catch (err) {
      // No clipboard permission (or not a secure context): select the text for Ctrl+C.
      field.focus();
      field.select();
      let copied = false;
      try {
        copied = document.execCommand('copy');
      } catch (e) {
        copied = false;
      }
      status.show(copied ? 'copied the command' : 'the command is selected: press Ctrl+C to copy');
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Compare: cards of (method, class) pairs
  // ---------------------------------------------------------------------------------------------

  let cardSeq = 0;

  function addCompareCard() {
    if (state.imageId === null) return;
    const params = mapParams();
    const card = { id: ++cardSeq, params, node: null };
    state.compare.push(card);
    card.node = buildCard(card);
    $('compare-cards').append(card.node);
    $('compare-empty').hidden = true;
    run(() => loadCard(card));
  }

  function buildCard(card) {
    const method = state.info.methods.find((m) => m.name === card.params.method);
    const node = el('article', { className: 'card', dataset: { card: card.id } });
    const title = el('h3', { textContent: method ? method.title || method.name : card.params.method });
    const remove = el('button', {
      type: 'button',
      className: 'remove',
      textContent: '×',
      'aria-label': 'remove this card',
    });
    remove.addEventListener('click', () => {
      state.compare = state.compare.filter((c) => c !== card);
      node.remove();
      $('compare-empty').hidden = state.compare.length > 0;
    });
    const scores = el('button', { type: 'button', className: 'scores', textContent: 'scores' });
    scores.addEventListener('click', () => run(() => loadScores(card)));
    node.append(
      el('header', {}, title, remove),
      el('p', { className: 'card-target' }),
      el('img', { className: 'card-map', alt: 'explanation map' }),
      el('p', { className: 'card-legend' }),
      el('div', { className: 'card-scores' }, scores, el('span', { className: 'scores-text' })),
    );
    return node;
  }

  async function loadCard(card) {
    const { node } = card;
    const seq = (card.seq = (card.seq || 0) + 1); // only the latest load of a card is shown
    node.classList.add('busy');
    node.querySelector('.scores-text').textContent = '';
    try {
      const answer = await api(imageUrl(state.imageId, 'explanation', card.params));
      if (seq !== card.seq) return;
      await loadImage(node.querySelector('.card-map'), answer.image);
      if (seq !== card.seq) return;
      const { target } = answer;
      node.querySelector('.card-target').textContent =
        `${target.index}: ${target.label} · ${percent(target.probability)}` +
        (answer.layer ? ` · ${answer.layer}` : '');
      node.querySelector('.card-legend').textContent = answer.legend || '';
    } finally {
      if (seq === card.seq) node.classList.remove('busy');
    }
  }

  async function loadScores(card) {
    const text = card.node.querySelector('.scores-text');
    text.textContent = 'computing…';
    try {
      const s = await api(imageUrl(state.imageId, 'faithfulness', card.params));
      text.textContent = '';
      text.append(
        el('span', { title: 'RISE deletion area: lower is better' }, `deletion ${s.deletion.toFixed(3)} ↓`),
        ' · ',
        el('span', { title: 'RISE insertion area: higher is better' }, `insertion ${s.insertion.toFixed(3)} ↑`),
      );
    } catch (err) {
      text.textContent = 'failed';
      throw err;
    }
  }

  async function refreshCompareCards() {
    await Promise.all(state.compare.map((card) => loadCard(card)));
  }

  // ---------------------------------------------------------------------------------------------
  // Activations: a layer's channels as a grid of sprite tiles; one channel's details
  // ---------------------------------------------------------------------------------------------

  const TILE_PX = 72; // displayed size of a channel's tile

  function setUpActivations() {
    const spatial = state.layers.filter((l) => l.spatial);
    fillSelect(
      $('activation-layer'),
      spatial.map((l) => [l.name, `${l.name} · ${formatShape(l.shape)}`]),
    );
    const preferred = spatial.find((l) => l.name === state.info.default_layer);
    if (preferred) $('activation-layer').value = preferred.name;
    const refresh = () => run(refreshActivations);
    $('activation-layer').addEventListener('change', refresh);
    $('activation-sort').addEventListener('change', refresh);
  }

  let activationSeq = 0;

  async function refreshActivations() {
    const layer = $('activation-layer').value;
    if (state.imageId === null || !layer) return;
    const sort = $('activation-sort').value;
    const key = `${state.imageId}|${layer}|${sort}`;
    if (key === state.activationsKey) return;
    const seq = ++activationSeq;
    status.show(`reading the activations of ${layer}…`, 'busy');
    const grid = $('activation-grid');
    grid.classList.add('busy');
    try {
      const answer = await api(imageUrl(state.imageId, 'activations', { layer, sort, limit: 64 }));
      if (seq !== activationSeq) return;
      // Load the sprite once before drawing so that every tile appears together.
      await loadImage(new Image(), answer.sprite);
      if (seq !== activationSeq) return;
      drawGrid(answer);
      state.activationsKey = key;
      status.show(`${answer.layer}: ${answer.channels.length} of ${answer.total} channels`);
    } finally {
      if (seq === activationSeq) grid.classList.remove('busy');
    }
  }

  function drawGrid(answer) {
    const { tile, columns, channels } = answer;
    const rows = Math.ceil(channels.length / columns);
    const scale = TILE_PX / tile;
    const grid = $('activation-grid');
    grid.replaceChildren();
    channels.forEach((channel, i) => {
      const picture = el('div', { className: 'tile' });
      // The sprite holds the tiles row by row: scale it so that one tile is TILE_PX square.
      picture.style.backgroundImage = `url("${withToken(answer.sprite)}")`;
      picture.style.backgroundSize = `${columns * tile * scale}px ${rows * tile * scale}px`;
      picture.style.backgroundPosition = `${-(i % columns) * TILE_PX}px ${-Math.floor(i / columns) * TILE_PX}px`;
      const node = el(
        'button',
        {
          type: 'button',
          className: 'channel',
          title: `channel ${channel.index}: mean ${channel.mean.toFixed(3)}, max ${channel.max.toFixed(3)}`,
          dataset: { channel: channel.index },
        },
        picture,
        el('span', { className: 'channel-index', textContent: String(channel.index) }),
      );
      node.addEventListener('click', () => {
        for (const other of grid.querySelectorAll('.channel.selected')) other.classList.remove('selected');
        node.classList.add('selected');
        run(() => showChannel(answer.layer, channel.index));
      });
      grid.append(node);
    });
    $('channel-count').textContent = `${channels.length} of ${answer.total} channels`;
  }

  function hideChannelDetail() {
    $('channel-detail').hidden = true;
  }

  let channelSeq = 0;

  async function showChannel(layer, channel) {
    const seq = ++channelSeq;
    const answer = await api(imageUrl(state.imageId, 'channel', { layer, channel }));
    if (seq !== channelSeq) return;
    $('channel-detail').hidden = false;
    $('channel-title').textContent = `${answer.layer} · channel ${answer.channel}`;
    $('channel-stats').textContent = `mean ${answer.mean.toFixed(3)} · max ${answer.max.toFixed(3)}`;
    const loads = [loadImage($('channel-overlay'), answer.overlay)];
    const filterFigure = $('channel-filter-figure');
    filterFigure.hidden = !answer.filter;
    if (answer.filter) loads.push(loadImage($('channel-filter'), answer.filter));
    loads.push(loadImage($('channel-exemplars'), answer.exemplars));
    // The feature visualisation is computed on first request (seconds on a CPU).
    const featurevis = $('channel-featurevis');
    const caption = $('channel-featurevis-caption');
    caption.textContent = 'feature visualisation: computing…';
    featurevis.classList.add('pending');
    featurevis.removeAttribute('src');
    const fv = loadImage(featurevis, answer.featurevis).then(
      () => {
        if (seq !== channelSeq) return;
        featurevis.classList.remove('pending');
        caption.textContent = 'feature visualisation';
      },
      (err) => {
        if (seq !== channelSeq) return;
        caption.textContent = 'feature visualisation: failed';
        throw err;
      },
    );
    loads.push(fv);
    await Promise.all(loads);
  }

  // ---------------------------------------------------------------------------------------------
  // Structure: the summary table and a convolution's filters
  // ---------------------------------------------------------------------------------------------

  async function loadStructure() {
    if (state.structureLoaded) return;
    state.structureLoaded = true;
    const convs = state.layers.filter((l) => l.conv);
    const picker = $('filters-layer');
    fillSelect(picker, convs.map((l) => [l.name, `${l.name} · ${formatShape(l.shape)}`]));
    const showFilters = () =>
      run(() => loadImage($('filters-image'), `api/filters.png?${new URLSearchParams({ layer: picker.value })}`));
    picker.addEventListener('change', showFilters);
    if (convs.length) showFilters();
    try {
      const summary = await api('api/summary');
      const body = $('summary-table').tBodies[0];
      body.replaceChildren(
        ...summary.rows.map((row) => {
          const name = el('td', { className: 'name', textContent: row.name || '(the model)' });
          name.style.paddingLeft = `${0.5 + 0.75 * Math.max(0, (row.depth || 0) - 1)}em`;
          return el(
            'tr',
            {},
            name,
            el('td', { textContent: row.type }),
            el('td', { textContent: formatShape(row.output_shape) }),
            el('td', { className: 'num', textContent: formatInt(row.params) }),
            el('td', { className: 'num', textContent: formatInt(row.mult_adds) }),
          );
        }),
      );
      $('summary-totals').textContent =
        `${formatInt(summary.total_params)} parameters (${formatInt(summary.trainable_params)} trainable, ` +
        `${formatInt(summary.frozen_params)} frozen) · ${formatInt(summary.total_mult_adds)} mult-adds · ` +
        `input ${formatShape(summary.input_size)}`;
    } catch (err) {
      state.structureLoaded = false; // try again next time
      throw err;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Start-up
  // ---------------------------------------------------------------------------------------------

  async function start() {
    // The token now lives in the cookie: keep it out of the address bar (and screenshots).
    const url = new URL(window.location.href);
    if (url.searchParams.has('token')) {
      url.searchParams.delete('token');
      window.history.replaceState(null, '', url.pathname + url.search + url.hash);
    }
    setUpTabs();
    setUpExport();
    $('compare-add').addEventListener('click', addCompareCard);
    $('upload-input').addEventListener('change', (event) => {
      const files = Array.from(event.target.files || []);
      event.target.value = '';
      run(() => upload(files));
    });

    status.show('loading…', 'busy');
    const [info, classes, layers] = await Promise.all([
      api('api/info'),
      api('api/classes'),
      api('api/layers'),
    ]);
    state.info = info;
    state.classes = classes.classes;
    state.layers = layers.layers;
    const { model } = info;
    $('model-info').textContent =
      `${model.name}${model.architecture && model.architecture !== model.name ? ` (${model.architecture})` : ''}` +
      ` · ${formatInt(model.classes)} classes · input ${formatShape(model.input)}` +
      (info.version ? ` · cnnviz ${info.version}` : '');
    setUpSettings();
    setUpActivations();
    await loadImages();
    if (state.images.length) await selectImage(state.images[0].id);
    else status.show('no images yet: upload one');
  }

  document.addEventListener('DOMContentLoaded', () => run(start));
})();
