// dtrain dashboard: jobs, one job (curves from its history, then live server-sent events), workers.
// Plain JS, no build step; charts with the vendored uPlot (window.uPlot). The JSON API is documented in docs/cluster.md.
(() => {
  'use strict';
  const app = document.getElementById('app');
  const liveDot = document.getElementById('live');
  // What the page shows, for people poking at it in the console and for the browser tests.
  const dtrain = window.dtrain = { charts: {}, rows: new Map(), job: null, workers: [], jobs: [], shownSteps: [], lastEventStep: null };

  // ---------- helpers ----------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }
  const num = (x, digits = 4) => (x === null || x === undefined || Number.isNaN(x)) ? '' : Number(x).toPrecision(digits).replace(/\.?0+$/, m => m.includes('.') ? '' : m);
  const fixed = (x, d = 1) => (x === null || x === undefined) ? '' : Number(x).toFixed(d);
  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return '';
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
    return h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${sec}s` : `${sec}s`;
  }
  const when = ms => ms ? new Date(ms).toLocaleString() : '';
  function bytes(n) {
    if (!n) return '';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  }
  function setLive(on) { liveDot.classList.toggle('on', on); liveDot.title = on ? 'live updates on' : 'live updates off'; }

  async function api(path) {
    const r = await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (r.status === 401) { location.href = '/login?next=' + encodeURIComponent(location.pathname); throw new Error('not logged in'); }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  function fail(e) { app.replaceChildren(el('p', { class: 'error', id: 'error', text: String(e.message || e) })); }

  function stream(path, handlers) {
    const es = new EventSource(path);
    es.onopen = () => setLive(true);
    es.onerror = () => setLive(false);
    for (const [name, f] of Object.entries(handlers)) es.addEventListener(name, ev => f(JSON.parse(ev.data)));
    window.addEventListener('beforeunload', () => es.close());
    return es;
  }

  function bytes(n) {
    if (!(n >= 1000)) return `${n || 0} B`;
    const units = ['kB', 'MB', 'GB', 'TB', 'PB'];
    let v = n, u = -1;
    while (v >= 1000 && u < units.length - 1) { v /= 1000; u++; }
    return `${Math.round(v * 10) / 10} ${units[u]}`;
  }

  function progress(j) {
    const pct = Math.round((j.progress || 0) * 100);
    const fill = el('span');
    fill.style.width = `${pct}%`; // through the CSSOM: the Content-Security-Policy allows no inline style attributes
    return el('span', {}, el('span', { class: 'bar' }, fill), `${j.step}/${j.total_steps || '?'} (${pct}%)`);
  }

  // ---------- jobs ----------
  function jobsPage() {
    document.title = 'dtrain: jobs';
    const tbody = el('tbody');
    app.replaceChildren(el('h1', { text: 'Jobs' }), el('table', { id: 'jobs-table' },
      el('thead', {}, el('tr', {}, ['job', 'name', 'task', 'state', 'progress', 'ETA', 'loss', 'val', 'samples/s', 'workers', 'owner', 'stored', 'submitted'].map(h => el('th', { text: h })))),
      tbody), el('p', { class: 'muted', id: 'jobs-empty', text: '' }), el('p', { class: 'muted', id: 'jobs-storage', text: '' }));
    const render = jobs => {
      dtrain.jobs = jobs;
      document.getElementById('jobs-empty').textContent = jobs.length ? '' : 'No jobs yet: submit one with `dtrain submit SPEC`.';
      tbody.replaceChildren(...jobs.slice().reverse().map(j => el('tr', { 'data-job-id': j.id },
        el('td', {}, el('a', { href: `/jobs/${encodeURIComponent(j.id)}`, text: j.id })),
        el('td', { text: j.name }), el('td', { text: j.task }),
        el('td', { class: `state-${j.state}`, text: j.state, title: j.message || '' }),
        el('td', {}, progress(j)),
        el('td', { class: 'num', text: duration(j.eta_seconds) }),
        el('td', { class: 'num', text: num(j.loss) }),
        el('td', { class: 'num', text: j.last_eval ? num(j.last_eval.loss) : '' }),
        el('td', { class: 'num', text: fixed(j.samples_per_second) }),
        el('td', { class: 'num', text: j.workers.length || j.workers_requested || '' }),
        el('td', { text: j.owner || '-' }),
        el('td', { class: 'num', text: bytes(j.stored_bytes) }),
        el('td', { text: when(j.submitted_unix_ms) }))));
      api('/api/storage').then(storage => {
        document.getElementById('jobs-storage').textContent = storage.map(s => `${s.owner ? 'storage of ' + s.owner : 'storage'}: ${bytes(s.stored_bytes)}` +
          (s.quota_bytes > 0 ? ` of ${bytes(s.quota_bytes)} (Coordinator:MaxStoredBytesPerOwner)` : '')).join(' · ');
      }).catch(() => {});
    };
    api('/api/jobs').then(render).catch(fail);
    stream('/api/stream', { jobs: render });
  }

  // ---------- workers ----------
  function workersPage() {
    document.title = 'dtrain: workers';
    const tbody = el('tbody');
    app.replaceChildren(el('h1', { text: 'Workers' }), el('table', { id: 'workers-table' },
      el('thead', {}, el('tr', {}, ['worker', 'name', 'state', 'job', 'phase', 'last heartbeat', 'address', 'cores', 'device', 'threads', 'memory', 'note'].map(h => el('th', { text: h })))),
      tbody));
    const render = workers => {
      dtrain.workers = workers;
      tbody.replaceChildren(...workers.map(w => el('tr', { 'data-worker-id': w.id },
        el('td', { text: w.id }), el('td', { text: w.name }),
        el('td', { class: `state-${w.state}`, text: w.state + (w.cordoned && w.state !== 'cordoned' ? ' (cordoned)' : '') }),
        el('td', {}, w.job ? el('a', { href: `/jobs/${encodeURIComponent(w.job)}`, text: w.job }) : ''),
        el('td', { class: 'phase', text: w.phase ? (w.in_phase_seconds >= 1 ? `${w.phase} (${Math.round(w.in_phase_seconds)} s)` : w.phase) : '' }),
        el('td', { class: 'num', text: `${fixed(w.heartbeat_age_seconds)} s ago`, title: when(w.last_heartbeat_unix_ms) }),
        el('td', { text: w.address }), el('td', { class: 'num', text: w.cores }), el('td', { text: w.device }),
        el('td', { class: 'num', text: w.threads }), el('td', { class: 'num', text: bytes(w.memory_bytes) }),
        el('td', { class: 'muted', text: w.message || '' }))));
    };
    api('/api/workers').then(render).catch(fail);
    stream('/api/stream', { workers: render });
  }

  // ---------- one job ----------
  const palette = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#a16207', '#db2777'];

  // Chart definitions: which row fields each one draws.
  const chartDefs = [
    { id: 'loss', title: 'Loss', series: [['loss', 'training loss'], ['val_loss', 'validation loss']] },
    { id: 'validation', title: 'Validation metrics', series: [['val_accuracy', 'accuracy'], ['val_macro_f1', 'macro F1'], ['val_perplexity', 'perplexity'], ['val_bits_per_token', 'bits/token']], optional: true },
    { id: 'lr', title: 'Learning rate', series: [['lr', 'lr']] },
    { id: 'throughput', title: 'Samples/s', series: [['samples_per_second', 'samples/s']] },
    { id: 'time', title: 'Step time (ms): compute / all-reduce / waiting', series: [['compute_ms', 'compute'], ['allreduce_ms', 'all-reduce'], ['waiting_ms', 'waiting'], ['step_ms', 'step']] },
    { id: 'bubble', title: 'Pipeline bubble (share of the step stages wait)', series: [['bubble', 'bubble']], optional: true },
    { id: 'stages', title: 'Pipeline stages: compute time (ms)', series: [], optional: true, stages: true },
    { id: 'gradnorm', title: 'Gradient norm', series: [['grad_norm', 'grad norm']] },
  ];

  // A series key "stage_compute_ms#2" is the third element of that array.
  function value(row, key) {
    const [name, index] = key.split('#');
    const v = index === undefined ? row[name] : (row[name] || [])[Number(index)];
    return v === undefined ? null : v;
  }

  function chartData(def) {
    const steps = [...dtrain.rows.keys()].sort((a, b) => a - b);
    const cols = def.series.map(([key]) => steps.map(s => value(dtrain.rows.get(s), key)));
    return [steps, ...cols];
  }

  // The stages chart has one series per stage, known once a pipeline step has arrived.
  function stageSeries(def) {
    if (!def.stages || def.series.length > 0) return;
    let k = 0;
    for (const r of dtrain.rows.values()) if (r.stage_compute_ms) k = Math.max(k, r.stage_compute_ms.length);
    for (let i = 0; i < k; i++) def.series.push([`stage_compute_ms#${i}`, `stage ${i}`]);
  }

  // Validation series have a value every eval_interval steps only: markers on each, or a job's single evaluation draws
  // nothing (a line needs two points). Training series have one per step: a line.
  const pointsOf = (key, i) => key.startsWith('val_') ? { show: true, size: 6, stroke: palette[i % palette.length], fill: palette[i % palette.length] } : { show: false };

  function drawCharts(container) {
    for (const def of chartDefs) {
      stageSeries(def);
      const data = chartData(def);
      const present = data.slice(1).map(col => col.some(v => v !== null));
      const box = document.getElementById(`chart-${def.id}`) || container.appendChild(
        el('div', { class: 'chart', id: `chart-${def.id}` }, el('h3', { text: def.title })));
      // The number of steps with a value of the chart's first series: what the browser tests compare with the steps reported.
      box.dataset.points = String(data.length > 1 ? data[1].filter(v => v !== null).length : 0);
      const hide = def.optional && !present.some(Boolean);
      box.hidden = hide;
      if (hide) continue;
      let chart = dtrain.charts[def.id];
      if (!chart) {
        const width = Math.max(300, box.clientWidth - 16);
        chart = dtrain.charts[def.id] = new uPlot({
          width, height: 220,
          scales: { x: { time: false } },
          series: [{ label: 'step' }, ...def.series.map(([key, label], i) => ({ label, stroke: palette[i % palette.length], width: 1.5, spanGaps: true, points: pointsOf(key, i) }))],
          axes: [{ label: 'step' }, {}],
        }, data, box);
      } else {
        chart.setData(data);
      }
      def.series.forEach((_, i) => chart.setSeries(i + 1, { show: present[i] }));
    }
  }

  let pendingDraw = false;
  function scheduleDraw(container) {
    if (pendingDraw) return;
    pendingDraw = true;
    requestAnimationFrame(() => { pendingDraw = false; drawCharts(container); });
  }

  function facts(j) {
    const f = (label, value, id) => el('div', { id }, el('span', { text: label }), value);
    return [
      f('state', el('b', { class: `state-${j.state}`, text: j.state }), 'job-state'),
      f('progress', progress(j), 'job-progress'),
      f('ETA', duration(j.eta_seconds) || '-'),
      f('epoch', j.epoch),
      f('loss', num(j.loss)),
      f('validation loss', j.last_eval ? num(j.last_eval.loss) : '-'),
      f('samples/s', fixed(j.samples_per_second)),
      f('workers', j.workers.join(', ') || '-', 'job-workers'),
      f('owner', j.owner || '-'),
      f('parameters', j.parameters ? j.parameters.toLocaleString() : '-'),
      f('submitted', when(j.submitted_unix_ms)),
      f('finished', when(j.finished_unix_ms) || '-'),
      j.restarts ? f('restarts', j.restarts) : null,
      j.resumed_from ? f('resumed from', j.resumed_from) : null,
      j.message ? f('message', el('span', { class: j.state === 'failed' ? 'error' : '', text: j.message })) : null,
    ];
  }

  function mergeRow(row, kind) {
    const old = dtrain.rows.get(row.step);
    // A step run again after a restart replaces the earlier one; an evaluation adds its metrics to its step.
    dtrain.rows.set(row.step, kind === 'eval' && old ? { ...old, ...row } : kind === 'step' && old && old.val_loss !== undefined && row.val_loss === undefined ? { ...row, ...pick(old) } : row);
  }
  const pick = o => Object.fromEntries(Object.entries(o).filter(([k]) => k.startsWith('val_')));

  async function jobPage(id) {
    document.title = `dtrain: ${id}`;
    const [detail, history] = await Promise.all([api(`/api/jobs/${encodeURIComponent(id)}`), api(`/api/jobs/${encodeURIComponent(id)}/history`)]);
    dtrain.job = detail;
    for (const r of history.rows) mergeRow(r, r.loss === undefined ? 'eval' : 'step');
    const factsBox = el('div', { class: 'facts', id: 'job-facts' });
    // The header: every render is noted (dtrain.shownSteps) so the browser tests can see it never goes back.
    const showFacts = j => { factsBox.replaceChildren(...facts(j).filter(Boolean)); dtrain.shownSteps.push(j.step); };
    showFacts(detail);
    const charts = el('div', { class: 'charts', id: 'charts' });
    const checkpoints = el('div', { id: 'checkpoints' });
    const sample = el('div', { id: 'sample-box' });
    const log = el('pre', { id: 'log', text: '' });
    app.replaceChildren(
      el('h1', {}, `${detail.id} `, el('span', { class: 'muted', text: `${detail.name} (${detail.task})` })),
      factsBox, charts,
      el('h2', { text: 'Checkpoints' }), checkpoints,
      detail.language_model ? el('h2', { text: 'Generated sample' }) : null, sample,
      el('h2', { text: 'Events' }), log,
      el('h2', { text: 'Spec' }), el('pre', { id: 'spec', text: JSON.stringify(detail.spec, null, 2) }),
      el('p', {}, el('a', { href: `/api/jobs/${encodeURIComponent(id)}/metrics.csv`, id: 'metrics-csv', text: 'metrics as CSV' }), ' (as `dtrain metrics ' + id + '`)'));
    drawCharts(charts);
    window.addEventListener('resize', () => { for (const c of Object.values(dtrain.charts)) c.setSize({ width: Math.max(300, c.root.parentElement.clientWidth - 16), height: 220 }); });

    let pendingFacts = false;
    const scheduleFacts = () => {
      if (pendingFacts) return;
      pendingFacts = true;
      requestAnimationFrame(() => { pendingFacts = false; showFacts(dtrain.job); });
    };

    let sampleFor = null;
    const showDetail = d => {
      dtrain.job = d;
      showFacts(d);
      checkpoints.replaceChildren(d.checkpoints.length === 0 ? el('p', { class: 'muted', text: 'none yet' }) : el('table', { id: 'checkpoints-table' },
        el('thead', {}, el('tr', {}, ['step', 'file', 'size', 'written'].map(h => el('th', { text: h })))),
        el('tbody', {}, d.checkpoints.map(c => el('tr', {},
          el('td', { class: 'num', text: c.step }), el('td', {}, el('a', { href: c.url, download: '', text: c.name })),
          el('td', { class: 'num', text: bytes(c.bytes) }), el('td', { text: when(c.modified_unix_ms) }))))));
      const newest = d.checkpoints.length ? d.checkpoints[d.checkpoints.length - 1].name : null;
      if (d.language_model && newest && newest !== sampleFor) {
        sampleFor = newest;
        sample.replaceChildren(el('p', { class: 'muted', text: 'generating...' }));
        api(`/api/jobs/${encodeURIComponent(id)}/sample`).then(s => sample.replaceChildren(
          el('p', { class: 'muted', text: s.text === null ? s.note : `from ${s.checkpoint} (step ${s.step}), dtrain generate ${s.settings}` }),
          s.text === null ? null : el('pre', { id: 'sample', text: s.text }))).catch(e => sample.replaceChildren(el('p', { class: 'error', text: e.message })));
      } else if (d.language_model && !newest) {
        sample.replaceChildren(el('p', { class: 'muted', text: 'no checkpoint yet' }));
      }
    };
    showDetail(detail);

    const refresh = () => api(`/api/jobs/${encodeURIComponent(id)}`).then(showDetail).catch(() => {});
    const ended = ['succeeded', 'failed', 'cancelled'];
    const timer = ended.includes(detail.state) ? null : setInterval(refresh, 10000);
    const lines = [];
    const es = stream(`/api/jobs/${encodeURIComponent(id)}/events`, {
      step: r => {
        mergeRow(r, 'step'); scheduleDraw(charts);
        dtrain.lastEventStep = r.step;
        // A step newer than the header moves it on (the events so far are replayed first: older steps leave it alone).
        const j = dtrain.job;
        if (r.step > j.step) {
          Object.assign(j, { step: r.step, epoch: r.epoch ?? j.epoch, loss: r.loss ?? j.loss, samples_per_second: r.samples_per_second ?? j.samples_per_second,
            progress: j.total_steps > 0 ? Math.min(1, r.step / j.total_steps) : j.progress });
          scheduleFacts();
        }
      },
      eval: r => { mergeRow(r, 'eval'); scheduleDraw(charts); },
      // The job as it is now (the server sends its current record with every state event, replayed ones included).
      state: j => {
        const shown = dtrain.job;
        // A step event may have moved the header past the record's step already: keep the newer progress.
        const ahead = j.generation === shown.generation && j.step < shown.step
          ? { step: shown.step, epoch: shown.epoch, loss: shown.loss, samples_per_second: shown.samples_per_second, progress: shown.progress } : {};
        Object.assign(shown, j, ahead);
        scheduleFacts();
      },
      log: l => { lines.push(l.text); if (lines.length > 200) lines.shift(); log.textContent = lines.join('\n'); },
      end: j => {
        es.close(); setLive(false);
        if (timer) clearInterval(timer);
        Object.assign(dtrain.job, j);
        refresh();
        document.body.dataset.jobEnded = 'true';
      },
    });
  }

  // ---------- who am I, routing ----------
  api('/api/auth').then(a => {
    dtrain.auth = a;
    if (a.required) {
      document.getElementById('whoami').textContent = `${a.name} (${a.role})`;
      document.getElementById('logout').hidden = false;
    }
    if (!a.may_list_workers) document.getElementById('nav-workers').hidden = true;
  }).catch(() => {});

  const path = location.pathname;
  const m = path.match(/^\/jobs\/([^/]+)$/);
  try {
    if (m) jobPage(decodeURIComponent(m[1])).catch(fail);
    else if (path === '/workers') workersPage();
    else jobsPage();
  } catch (e) { fail(e); }
})();
