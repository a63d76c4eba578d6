// clusterwatch's cluster explorer: reads the k-anonymous JSON API (/api/clusters, /api/alerts,
// /api/clusters/{id}, /api/config) and shows domains → topics → clusters, a 2-D map of the
// cluster centroids and each cluster's detail.
//
// Labels are derived from user traffic, so every value is put into the page with textContent or
// as an attribute of an element built here, never parsed as HTML. The file is served separately
// (no inline script) so the server's Content-Security-Policy can forbid everything else.
//
// The API token comes from the URL fragment (#token=..., which never reaches a server log) or the
// input box; it is kept in sessionStorage (gone when the tab closes) and removed from the URL so
// it does not end up in history, bookmarks or screenshots.
'use strict';

(function () {
  const TOKEN_KEY = 'clusterwatch.explorer.token';
  const REFRESH_MS = 30000;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const MAP_WIDTH = 1000;
  const MAP_HEIGHT = 700;
  const MAP_MARGIN = 40;
  const UNASSIGNED = 'unassigned';
  const SEVERITY_COLOURS = { none: '#8aa1b8', info: '#4c8bf5', warning: '#f0a020', critical: '#e5484d' };
  // Refusal colour saturates here: refusal rates are mostly small, and the interesting ones are
  // the clusters far above the rest.
  const REFUSAL_SATURATION = 0.5;

  const state = {
    clusters: [],
    byId: new Map(),
    alerts: { open: [], resolved: [] },
    config: { grafana_url: null, dashboards: {}, alert_titles: {} },
    eventTime: null,
    domain: null, // null: all domains; otherwise a domain key
    topic: null, // null: all topics of the domain; otherwise a topic key
    selected: null, // cluster id
    colour: 'severity',
    detailRequest: 0,
    timer: null,
  };

  class AuthError extends Error {}

  // ---- small DOM helpers (text only) ----

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, String(value));
    }
    return node;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function setStatus(text, isError) {
    const status = byId('status');
    status.textContent = text;
    status.classList.toggle('error', Boolean(isError));
  }

  function formatNumber(n) {
    return Number(n).toLocaleString('en-US');
  }

  function percent(x) {
    return (100 * Number(x)).toFixed(1) + '%';
  }

  // ---- token ----

  // True when the fragment carried a token (now stored and removed from the URL).
  function takeTokenFromFragment() {
    const fragment = window.location.hash.replace(/^#/, '');
    if (!fragment) return false;
    const kept = [];
    let token = null;
    for (const part of fragment.split('&')) {
      if (part.startsWith('token=')) {
        try {
          token = decodeURIComponent(part.slice('token='.length));
        } catch (e) {
          token = part.slice('token='.length);
        }
      } else if (part) {
        kept.push(part);
      }
    }
    if (token === null) return false;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    const rest = kept.length ? '#' + kept.join('&') : '';
    history.replaceState(null, '', window.location.pathname + window.location.search + rest);
    return Boolean(token);
  }

  function showTokenNeeded(message) {
    byId('token-form').classList.add('needed');
    setStatus(message, true);
    byId('token-input').focus();
  }

  // ---- API ----

  async function api(path) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    // Relative paths: the page works wherever clusterwatch is mounted.
    const response = await fetch(path, { headers, cache: 'no-store', credentials: 'omit' });
    if (response.status === 401) throw new AuthError('unauthorized');
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(path + ': HTTP ' + response.status);
    return response.json();
  }

  async function load() {
    try {
      const [config, clusters, alerts] = await Promise.all([
        api('api/config'),
        api('api/clusters'),
        api('api/alerts'),
      ]);
      state.config = config || state.config;
      state.clusters = (clusters && clusters.clusters) || [];
      state.byId = new Map(state.clusters.map((c) => [c.cluster_id, c]));
      state.eventTime = clusters ? clusters.event_time : null;
      state.alerts = alerts || { open: [], resolved: [] };
      byId('token-form').classList.remove('needed');
      const hidden = clusters && clusters.totals ? clusters.totals.hidden_clusters : null;
      setStatus(
        formatNumber(state.clusters.length) + ' visible clusters' +
          (hidden !== null ? ' (' + formatNumber(hidden) + ' below the privacy gate, not shown)' : '') +
          (state.eventTime ? ' · as of ' + state.eventTime : ''),
        false,
      );
      // A level that emptied since the last refresh falls back to its parent.
      if (state.domain !== null && !state.clusters.some((c) => domainKey(c) === state.domain)) {
        state.domain = null;
        state.topic = null;
      }
      if (state.topic !== null && !scoped().length) state.topic = null;
      render();
      if (state.selected !== null) loadDetail(state.selected);
    } catch (e) {
      if (e instanceof AuthError) {
        showTokenNeeded('The API needs a token: paste it above (or open the page with #token=…).');
      } else {
        setStatus('Could not load: ' + e.message, true);
      }
    }
  }

  function scheduleRefresh() {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => {
      if (!document.hidden) await load();
      scheduleRefresh();
    }, REFRESH_MS);
  }

  // ---- hierarchy ----

  function domainKey(c) {
    return c.domain_id === null || c.domain_id === undefined ? UNASSIGNED : String(c.domain_id);
  }

  function topicKey(c) {
    return c.topic_id === null || c.topic_id === undefined ? UNASSIGNED : String(c.topic_id);
  }

  function domainName(c) {
    if (domainKey(c) === UNASSIGNED) return UNASSIGNED;
    return c.domain_label || 'domain ' + c.domain_id;
  }

  function topicName(c) {
    if (topicKey(c) === UNASSIGNED) return UNASSIGNED;
    return c.topic_label || 'topic ' + c.topic_id;
  }

  function scoped() {
    return state.clusters.filter(
      (c) =>
        (state.domain === null || domainKey(c) === state.domain) &&
        (state.topic === null || topicKey(c) === state.topic),
    );
  }

  function severityRank(alert) {
    if (!alert) return 0;
    return { info: 1, warning: 2, critical: 3 }[alert.severity] || 0;
  }

  // Groups `clusters` by `keyOf`, largest first, "unassigned" last.
  function groups(clusters, keyOf, nameOf) {
    const byKey = new Map();
    for (const c of clusters) {
      const key = keyOf(c);
      let g = byKey.get(key);
      if (!g) {
        g = { key, name: nameOf(c), clusters: 0, conversations: 0, worst: null };
        byKey.set(key, g);
      }
      g.clusters += 1;
      g.conversations += c.conversations;
      if (severityRank(c.alert) > severityRank(g.worst)) g.worst = c.alert;
    }
    return [...byKey.values()].sort((a, b) => {
      if ((a.key === UNASSIGNED) !== (b.key === UNASSIGNED)) return a.key === UNASSIGNED ? 1 : -1;
      return b.conversations - a.conversations || a.name.localeCompare(b.name);
    });
  }

  // ---- rendering ----

  function render() {
    renderBreadcrumb();
    renderLevels();
    renderClusterList();
    renderMap();
    renderLegend();
    renderAlertList();
  }

  function renderBreadcrumb() {
    const nav = byId('breadcrumb');
    const parts = [];
    const crumb = (text, onClick, name) => {
      if (!onClick) return el('span', 'current', text);
      const b = el('button', 'crumb-link', text);
      b.type = 'button';
      b.dataset.crumb = name;
      b.addEventListener('click', onClick);
      return b;
    };
    const atRoot = state.domain === null;
    parts.push(crumb('All domains', atRoot ? null : () => narrow(null, null), 'root'));
    if (!atRoot) {
      const sample = state.clusters.find((c) => domainKey(c) === state.domain);
      const name = sample ? domainName(sample) : state.domain;
      parts.push(crumb(name, state.topic === null ? null : () => narrow(state.domain, null), 'domain'));
    }
    if (state.topic !== null) {
      const sample = scoped()[0];
      parts.push(crumb(sample ? topicName(sample) : state.topic, null, 'topic'));
    }
    const children = [];
    parts.forEach((p, i) => {
      if (i > 0) children.push(el('span', 'separator', '›'));
      children.push(p);
    });
    nav.replaceChildren(...children);
  }

  function renderLevels() {
    const list = byId('levels');
    const title = byId('levels-title');
    let items = [];
    if (state.domain === null) {
      title.textContent = 'Domains';
      items = groups(state.clusters, domainKey, domainName).map((g) =>
        levelItem(g, 'domain', () => narrow(g.key, null)),
      );
    } else if (state.topic === null) {
      title.textContent = 'Topics';
      items = groups(scoped(), topicKey, topicName).map((g) =>
        levelItem(g, 'topic', () => narrow(state.domain, g.key)),
      );
    } else {
      title.textContent = 'Topic';
    }
    if (!items.length && state.topic === null) items = [el('li', 'muted', 'Nothing visible yet.')];
    list.replaceChildren(...items);
  }

  function levelItem(group, level, onClick) {
    const li = el('li');
    const b = el('button');
    b.type = 'button';
    b.dataset[level + 'Key'] = group.key;
    const name = el('span', 'name', group.name);
    if (group.worst) name.append(' ', alertBadge(group.worst));
    b.append(
      name,
      el('span', 'count', formatNumber(group.clusters) + ' clusters · ' + formatNumber(group.conversations) + ' conv.'),
    );
    b.addEventListener('click', onClick);
    li.append(b);
    return li;
  }

  function alertBadge(alert) {
    const badge = el('span', 'badge ' + alert.severity + ' ' + alert.status, alert.severity + ' ' + alert.status);
    badge.title = alertTitle(alert.kind);
    return badge;
  }

  function alertTitle(kind) {
    return (state.config.alert_titles && state.config.alert_titles[kind]) || kind;
  }

  function renderClusterList() {
    const clusters = scoped();
    byId('cluster-count').textContent = '(' + formatNumber(clusters.length) + ')';
    const items = clusters.map((c) => {
      const li = el('li');
      li.dataset.listClusterId = String(c.cluster_id);
      if (c.cluster_id === state.selected) li.classList.add('selected');
      const b = el('button');
      b.type = 'button';
      const name = el('span', 'name', c.label);
      if (c.alert) name.append(' ', alertBadge(c.alert));
      b.append(
        name,
        el('span', 'count', formatNumber(c.conversations) + ' conv. · ' + formatNumber(c.accounts) + ' acc.'),
      );
      b.addEventListener('click', () => select(c.cluster_id));
      li.append(b);
      return li;
    });
    if (!items.length) items.push(el('li', 'muted', 'No visible clusters here.'));
    byId('cluster-list').replaceChildren(...items);
  }

  function colourOf(c) {
    if (state.colour === 'refusal') {
      const t = Math.min(1, Number(c.refusal_rate) / REFUSAL_SATURATION);
      return 'hsl(' + Math.round(120 * (1 - t)) + ', 70%, 42%)';
    }
    return SEVERITY_COLOURS[c.alert ? c.alert.severity : 'none'] || SEVERITY_COLOURS.none;
  }

  function renderMap() {
    const map = byId('map');
    const clusters = scoped();
    if (!clusters.length) {
      const text = svg('text', { x: MAP_WIDTH / 2, y: MAP_HEIGHT / 2, 'text-anchor': 'middle', class: 'empty' });
      text.textContent = 'No visible clusters';
      map.replaceChildren(text);
      return;
    }
    // Fit the map to what is in scope, so drilling down zooms in; one scale for both axes keeps
    // the distances' proportions.
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity, maxConversations = 1;
    for (const c of clusters) {
      minX = Math.min(minX, c.x);
      maxX = Math.max(maxX, c.x);
      minY = Math.min(minY, c.y);
      maxY = Math.max(maxY, c.y);
      maxConversations = Math.max(maxConversations, c.conversations);
    }
    const span = Math.max(maxX - minX, maxY - minY, 1e-6);
    const scale = Math.min(MAP_WIDTH - 2 * MAP_MARGIN, MAP_HEIGHT - 2 * MAP_MARGIN) / span;
    const centreX = (minX + maxX) / 2;
    const centreY = (minY + maxY) / 2;
    // Largest first, so small circles are drawn on top and stay clickable.
    const ordered = [...clusters].sort((a, b) => b.conversations - a.conversations || a.cluster_id - b.cluster_id);
    const circles = ordered.map((c) => {
      const circle = svg('circle', {
        cx: (MAP_WIDTH / 2 + (c.x - centreX) * scale).toFixed(1),
        // Screen y grows downwards.
        cy: (MAP_HEIGHT / 2 - (c.y - centreY) * scale).toFixed(1),
        r: (4 + 24 * Math.sqrt(c.conversations / maxConversations)).toFixed(1),
        fill: colourOf(c),
        'data-cluster-id': c.cluster_id,
      });
      if (c.alert && c.alert.status === 'pending') circle.classList.add('pending');
      if (c.cluster_id === state.selected) circle.classList.add('selected');
      const title = svg('title');
      title.textContent = c.label + ' — ' + formatNumber(c.conversations) + ' conversations';
      circle.append(title);
      circle.addEventListener('click', () => select(c.cluster_id));
      return circle;
    });
    map.replaceChildren(...circles);
  }

  function renderLegend() {
    const legend = byId('legend');
    const entry = (colour, text) => {
      const span = el('span');
      const swatch = el('span', 'swatch');
      swatch.style.backgroundColor = colour;
      span.append(swatch, text);
      return span;
    };
    if (state.colour === 'refusal') {
      legend.replaceChildren(
        entry('hsl(120, 70%, 42%)', 'no refusals'),
        entry('hsl(60, 70%, 42%)', percent(REFUSAL_SATURATION / 2) + ' refused'),
        entry('hsl(0, 70%, 42%)', '≥ ' + percent(REFUSAL_SATURATION) + ' refused'),
      );
    } else {
      legend.replaceChildren(
        entry(SEVERITY_COLOURS.none, 'no open alert'),
        entry(SEVERITY_COLOURS.info, 'info'),
        entry(SEVERITY_COLOURS.warning, 'warning'),
        entry(SEVERITY_COLOURS.critical, 'critical'),
        el('span', 'muted', 'dashed outline: pending'),
      );
    }
  }

  function renderAlertList() {
    const open = state.alerts.open || [];
    byId('alert-count').textContent = '(' + formatNumber(open.length) + ')';
    const items = open.map((a) => {
      const li = el('li');
      li.dataset.alertId = a.alert_id;
      const b = el('button');
      b.type = 'button';
      const name = el('span', 'name', alertTitle(a.kind) + ': ' + a.label);
      b.append(name, alertBadge(a));
      const visible = a.cluster_id !== null && state.byId.has(a.cluster_id);
      if (visible) {
        b.addEventListener('click', () => {
          const c = state.byId.get(a.cluster_id);
          narrow(domainKey(c), topicKey(c));
          select(a.cluster_id);
        });
      } else {
        b.disabled = true;
        b.title = a.cluster_id === null ? 'surface alert' : 'cluster no longer visible';
      }
      li.append(b);
      return li;
    });
    if (!items.length) items.push(el('li', 'muted', 'None.'));
    byId('alert-list').replaceChildren(...items);
  }

  // ---- interaction ----

  function narrow(domain, topic) {
    state.domain = domain;
    state.topic = domain === null ? null : topic;
    if (state.selected !== null) {
      const c = state.byId.get(state.selected);
      if (!c || !scoped().includes(c)) {
        state.selected = null;
        renderEmptyDetail();
      }
    }
    render();
  }

  function select(id) {
    state.selected = id;
    renderClusterList();
    for (const circle of byId('map').querySelectorAll('circle')) {
      circle.classList.toggle('selected', circle.dataset.clusterId === String(id));
    }
    const c = state.byId.get(id);
    if (c) renderDetail(c, null);
    loadDetail(id);
  }

  async function loadDetail(id) {
    const request = ++state.detailRequest;
    try {
      const detail = await api('api/clusters/' + encodeURIComponent(String(id)));
      if (request !== state.detailRequest) return; // a later click won
      if (!detail) {
        const panel = byId('detail');
        panel.replaceChildren(el('p', 'muted', 'This cluster is no longer visible.'));
        return;
      }
      renderDetail(detail.cluster, detail.alerts);
    } catch (e) {
      if (e instanceof AuthError) showTokenNeeded('The API needs a token.');
      else setStatus('Could not load the cluster: ' + e.message, true);
    }
  }

  function renderEmptyDetail() {
    byId('detail').replaceChildren(el('p', 'muted', 'Select a cluster on the map or in the list.'));
  }

  function renderDetail(c, alerts) {
    const panel = byId('detail');
    const children = [];
    const title = el('h2', 'cluster-label', c.label);
    title.dataset.clusterId = String(c.cluster_id);
    children.push(title);
    children.push(el('p', 'path', domainName(c) + ' › ' + topicName(c) + ' › cluster ' + c.cluster_id));
    if (c.description) children.push(el('p', 'description', c.description));

    const counts = el('dl', 'counts');
    const add = (name, value) => counts.append(el('dt', null, name), el('dd', null, value));
    add('Conversations', formatNumber(c.conversations));
    add('Accounts', formatNumber(c.accounts));
    add('Organisations', formatNumber(c.orgs));
    add('Tightness', Number(c.tightness).toFixed(3));
    add('Refusal rate', percent(c.refusal_rate));
    add('Mean concern', Number(c.mean_concern).toFixed(2) + ' / 5');
    add('Classifier flags', percent(c.classifier_flag_rate));
    add('Born', c.born);
    add('Last seen', c.last_seen);
    children.push(counts);

    for (const [facet, title] of [['surfaces', 'Surfaces'], ['languages', 'Languages'], ['tasks', 'Tasks']]) {
      children.push(el('h3', null, title));
      children.push(facetBars(c[facet] || {}, facet));
    }

    children.push(el('h3', null, 'Alerts'));
    if (alerts === null) {
      children.push(el('p', 'muted', 'Loading…'));
    } else if (!alerts.length) {
      children.push(el('p', 'muted', 'No open or recent alerts.'));
    } else {
      const list = el('ul', 'alerts');
      for (const a of alerts) list.append(alertItem(a));
      children.push(list);
    }
    panel.replaceChildren(...children);
  }

  function facetBars(counts, facet) {
    const box = el('div', 'facet');
    box.dataset.facet = facet;
    const entries = Object.entries(counts).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    const total = entries.reduce((s, [, n]) => s + n, 0) || 1;
    if (!entries.length) box.append(el('p', 'muted', 'none'));
    for (const [name, n] of entries) {
      const row = el('div', 'facet-row');
      const track = el('div', 'bar-track');
      const bar = el('div', 'bar');
      // CSSOM, not a style attribute: allowed under style-src 'self'.
      bar.style.width = ((100 * n) / total).toFixed(1) + '%';
      bar.title = percent(n / total);
      track.append(bar);
      row.append(el('span', 'facet-name', name), track, el('span', 'count', formatNumber(n)));
      box.append(row);
    }
    return box;
  }

  function alertItem(a) {
    const li = el('li', a.severity);
    li.dataset.alertId = a.alert_id;
    const head = el('div');
    head.append(el('strong', null, alertTitle(a.kind)), ' ', alertBadge(a));
    li.append(head, el('div', 'alert-label', a.label));
    const stats = a.stats || {};
    let evidence = 'window from ' + a.window_start + ' · changed ' + a.event_time;
    if (stats.scope === 'cluster') {
      evidence +=
        ' · ' + formatNumber(stats.window_accounts) + ' accounts / ' +
        formatNumber(stats.window_conversations) + ' conversations in window · ' +
        Number(stats.accounts_per_minute).toFixed(1) + ' accounts/min';
    } else if (stats.scope === 'surface') {
      evidence += ' · surface ' + (a.surface || '') + ' · divergence ' + Number(stats.js_divergence).toFixed(3);
    }
    li.append(el('div', 'evidence', evidence));
    const link = grafanaLink(a);
    if (link) li.append(link);
    return li;
  }

  function grafanaLink(a) {
    const base = state.config.grafana_url;
    // The server only accepts http(s); checked again because this becomes a link.
    if (!base || !/^https?:\/\//i.test(base)) return null;
    const uid = (state.config.dashboards || {})[a.kind];
    if (!uid) return null;
    const margin = 30 * 60 * 1000;
    const start = Date.parse(a.window_start);
    const changed = Date.parse(a.event_time);
    const params = new URLSearchParams();
    params.set('from', String(isNaN(start) ? 'now-6h' : start - margin));
    params.set('to', a.status === 'resolved' && !isNaN(changed) ? String(changed + margin) : 'now');
    if (a.surface) params.set('var-surface', a.surface);
    const link = el('a', 'grafana-link', 'Open in Grafana');
    link.href = base + '/d/' + encodeURIComponent(uid) + '?' + params.toString();
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
    return link;
  }

  // ---- start ----

  function start() {
    takeTokenFromFragment();
    byId('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const input = byId('token-input');
      const token = input.value.trim();
      input.value = '';
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      load();
    });
    byId('token-forget').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.clusters = [];
      state.byId = new Map();
      state.alerts = { open: [], resolved: [] };
      state.selected = null;
      renderEmptyDetail();
      render();
      load();
    });
    const toggle = byId('colour-toggle');
    toggle.addEventListener('click', () => {
      state.colour = state.colour === 'severity' ? 'refusal' : 'severity';
      toggle.textContent = state.colour === 'severity' ? 'Colour: alert severity' : 'Colour: refusal rate';
      toggle.setAttribute('aria-pressed', String(state.colour === 'refusal'));
      renderMap();
      renderLegend();
    });
    byId('refresh').addEventListener('click', () => load());
    // A link with #token=... opened in a tab already showing the page changes only the fragment:
    // no reload, so take the token here.
    window.addEventListener('hashchange', () => {
      if (takeTokenFromFragment()) load();
    });
    load();
    scheduleRefresh();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
