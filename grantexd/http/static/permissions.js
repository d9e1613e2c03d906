// The permissions page: lists the end user's active grants and recent audit entries, and
// revokes a grant, through the principal API with the session token from the page's URL.
//
// Every value from the API is put on the page with textContent, never as HTML, because agent
// names, descriptions, scopes and audit actions are chosen by developers.
"use strict";

(function () {
  const text = JSON.parse(document.getElementById("page-text").textContent);
  const statusLine = document.getElementById("status");
  const grantsSection = document.getElementById("grants-section");
  const grantsHeading = document.getElementById("grants-heading");
  const grantsList = document.getElementById("grants");
  const grantsEmpty = document.getElementById("grants-empty");
  const auditSection = document.getElementById("audit-section");
  const auditList = document.getElementById("audit");
  const auditEmpty = document.getElementById("audit-empty");

  class SessionRejected extends Error {}

  // The app links here with #session=<token>, and ?session=<token> is accepted as well.
  function readSessionToken() {
    const fromFragment = new URLSearchParams(window.location.hash.slice(1)).get("session");
    if (fromFragment) {
      return fromFragment;
    }
    return new URLSearchParams(window.location.search).get("session");
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (match, name) {
      return Object.prototype.hasOwnProperty.call(values, name) ? String(values[name]) : match;
    });
  }

  function formatDate(moment) {
    const hours = String(moment.getUTCHours()).padStart(2, "0");
    const minutes = String(moment.getUTCMinutes()).padStart(2, "0");
    return moment.getUTCDate() + " " + text.months[moment.getUTCMonth()] + " " +
      moment.getUTCFullYear() + ", " + hours + ":" + minutes + " UTC";
  }

  // The same words as page_text.describe_duration: the largest unit and the next one.
  function describeDuration(totalSeconds) {
    let remaining = Math.max(Math.floor(totalSeconds), 0);
    const units = text.units;
    for (let index = 0; index < units.length; index += 1) {
      const [singular, plural, seconds] = units[index];
      const count = Math.floor(remaining / seconds);
      remaining -= count * seconds;
      if (count === 0 && seconds > 1) {
        continue;
      }
      let words = count + " " + (count === 1 ? singular : plural);
      if (index + 1 < units.length) {
        const [nextSingular, nextPlural, nextSeconds] = units[index + 1];
        const nextCount = Math.floor(remaining / nextSeconds);
        if (nextCount > 0) {
          words += " " + nextCount + " " + (nextCount === 1 ? nextSingular : nextPlural);
        }
      }
      return words;
    }
    return "";
  }

  function element(tag, className, content) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (content !== undefined) {
      node.textContent = content;
    }
    return node;
  }

  function timeElement(iso) {
    const node = element("time", "", formatDate(new Date(iso)));
    node.dateTime = iso;
    return node;
  }

  function announce(message) {
    statusLine.textContent = message;
  }

  async function callApi(token, method, path) {
    const response = await fetch(path, {
      method: method,
      headers: { Authorization: "Bearer " + token },
      cache: "no-store",
      credentials: "omit",
    });
    if (response.status === 401) {
      throw new SessionRejected();
    }
    return response;
  }

  async function fetchJson(token, path) {
    const response = await callApi(token, "GET", path);
    if (!response.ok) {
      throw new Error("GET " + path + " returned " + response.status);
    }
    return response.json();
  }

  function agentLabel(grant) {
    return grant.agentName || grant.agentId || text.permissions_unknown_agent;
  }

  function groupByAgent(grants) {
    const groups = new Map();
    for (const grant of grants) {
      if (!groups.has(grant.agentId)) {
        groups.set(grant.agentId, { name: agentLabel(grant), description: grant.agentDescription, grants: [] });
      }
      groups.get(grant.agentId).grants.push(grant);
    }
    return Array.from(groups.values());
  }

  function renderScopes(grant) {
    const list = element("ul", "scopes");
    const descriptions = Array.isArray(grant.scopeDescriptions) ? grant.scopeDescriptions : [];
    grant.scopes.forEach(function (scope, index) {
      const item = element("li", "");
      const description = descriptions[index];
      if (description && description !== scope) {
        item.append(description + " ", element("code", "", scope));
      } else {
        item.append(element("code", "", scope));
      }
      list.append(item);
    });
    return list;
  }

  function renderExpiry(grant) {
    const paragraph = element("p", "expiry");
    const expiresAt = new Date(grant.expiresAt);
    const secondsLeft = (expiresAt.getTime() - Date.now()) / 1000;
    const template = secondsLeft > 0 ? text.permissions_expires : text.permissions_expired;
    const [before, after] = fill(template, { duration: describeDuration(secondsLeft) }).split("{date}");
    paragraph.append(before, timeElement(grant.expiresAt), after || "");
    return paragraph;
  }

  function renderGrant(grant, agentName, token) {
    const item = element("li", "grant");
    item.dataset.grantId = grant.grantId;
    item.append(element("p", "muted", text.permissions_scopes_label), renderScopes(grant), renderExpiry(grant));
    const [before, after] = text.permissions_issued.split("{date}");
    const issued = element("p", "muted");
    issued.append(before, timeElement(grant.issuedAt), after || "");
    item.append(issued);
    if (grant.delegationDepth > 0) {
      item.append(element("p", "muted", text.permissions_delegated));
    }
    const button = element("button", "button deny revoke", text.permissions_revoke);
    button.type = "button";
    button.setAttribute("aria-label", fill(text.permissions_revoke_label, { agent: agentName }));
    button.addEventListener("click", function () {
      revokeGrant(token, grant.grantId, agentName, button);
    });
    item.append(button);
    return item;
  }

  function renderGrants(grants, token) {
    grantsList.replaceChildren();
    for (const group of groupByAgent(grants)) {
      const item = element("li", "agent");
      item.append(element("h3", "", group.name));
      if (group.description) {
        item.append(element("p", "muted", group.description));
      }
      const list = element("ul", "grant-list");
      for (const grant of group.grants) {
        list.append(renderGrant(grant, group.name, token));
      }
      item.append(list);
      grantsList.append(item);
    }
    grantsEmpty.hidden = grants.length > 0;
    grantsSection.hidden = false;
  }

  function renderAudit(entries, grants) {
    const names = new Map(grants.map(function (grant) { return [grant.agentId, agentLabel(grant)]; }));
    auditList.replaceChildren();
    for (const entry of entries) {
      const item = element("li", "");
      const agent = names.get(entry.agentId) || entry.agentDid || entry.agentId || text.permissions_unknown_agent;
      item.append(timeElement(entry.timestamp), element("strong", "", agent), " ", element("span", "", entry.action));
      if (entry.status && entry.status !== "success") {
        item.append(" ", element("span", "muted", fill(text.permissions_audit_status, { status: entry.status })));
      }
      auditList.append(item);
    }
    auditEmpty.hidden = entries.length > 0;
    auditSection.hidden = false;
  }

  function showSessionProblem(message) {
    grantsSection.hidden = true;
    auditSection.hidden = true;
    announce(message);
  }

  async function load(token) {
    const [grantsBody, auditBody] = await Promise.all([
      fetchJson(token, "/v1/principal/grants"),
      fetchJson(token, "/v1/principal/audit"),
    ]);
    renderGrants(grantsBody.grants, token);
    renderAudit(auditBody.entries, grantsBody.grants);
  }

  async function revokeGrant(token, grantId, agentName, button) {
    if (!window.confirm(fill(text.permissions_revoke_confirm, { agent: agentName }))) {
      return;
    }
    button.disabled = true;
    announce(fill(text.permissions_revoking, { agent: agentName }));
    let outcome;
    try {
      const response = await callApi(token, "DELETE", "/v1/principal/grants/" + encodeURIComponent(grantId));
      if (response.status === 204) {
        outcome = text.permissions_revoked;
      } else if (response.status === 404) {
        outcome = text.permissions_revoke_missing;
      } else {
        outcome = text.permissions_revoke_failed;
      }
    } catch (error) {
      if (error instanceof SessionRejected) {
        showSessionProblem(text.permissions_session_invalid);
        return;
      }
      outcome = text.permissions_revoke_failed;
    }
    try {
      await load(token);
    } catch (error) {
      showSessionProblem(error instanceof SessionRejected ? text.permissions_session_invalid : text.permissions_load_failed);
      return;
    }
    announce(fill(outcome, { agent: agentName }));
    // A successful revoke removes the focused button, so move keyboard focus to the list heading.
    grantsHeading.focus();
  }

  async function start() {
    const token = readSessionToken();
    if (!token) {
      showSessionProblem(text.permissions_no_session);
      return;
    }
    announce(text.permissions_loading);
    try {
      await load(token);
      announce(text.permissions_loaded);
    } catch (error) {
      showSessionProblem(error instanceof SessionRejected ? text.permissions_session_invalid : text.permissions_load_failed);
    }
  }

  // A new link with another #session= only changes the fragment, which does not reload the page.
  window.addEventListener("hashchange", start);
  start();
})();
