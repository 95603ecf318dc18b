// Runs a recipe through the Omnitool REST API, doing exactly what Omnitool's examples/api.mjs does:
// exec, find the job in /jobs and wait while it is 'running', then fetch and print the results.
// Only the URL, token, recipe id and polling interval differ, and they come from the environment:
//   OMNI_SERVER_URL, OMNI_TOKEN, OMNI_RECIPE_ID, OMNI_POLL_INTERVAL_MS
// Usage: node omnitool_api.mjs

import * as util from 'util';

const OMNI_SERVER_URL = process.env.OMNI_SERVER_URL || "http://127.0.0.1:1688" // The server url
const recipeId = process.env.OMNI_RECIPE_ID                                    // Id of the recipe to run
const interval = Number(process.env.OMNI_POLL_INTERVAL_MS || 1000 * 5)        // Polling interval for job results
const token = process.env.OMNI_TOKEN                                           // From `conveyor token exec Workflow <ms>`

let progressChars = ['|', '/', '-', '\\'];
let progressIndex = 0;


async function doFetch(url, token, method = 'GET', payload) {
  // As the example: the JSON content type is sent on every request, GETs included.
  const headers = {
    'Authorization': `Bearer ${token}`,
    'Content-Type': 'application/json'
  };

  const fetchOptions = {
    method,
    headers,
    body: payload ? JSON.stringify(payload) : undefined
  };

  const response = await fetch(url, fetchOptions);

  if (!response.ok) {
    console.error(`HTTP error! status: ${response.status} for url: ${url}`);
    throw new Error(`HTTP error! status: ${response.status} for url: ${url}`);
  }
  return response.json();
}


async function runRecipe() {
  const payload =
  {
    workflow: recipeId,
    args: {
      text: "A horse"
    },
  }
  const start = await doFetch(`${OMNI_SERVER_URL}/api/v1/workflow/exec`, token, 'POST', payload)
  const jobId = start.result.jobId

  console.log('job start', start)
  let finished = false

  const progressInterval = setInterval(() => {
    process.stdout.write('\r' + progressChars[progressIndex++ % progressChars.length] + ' Waiting for job to complete...');
  }, 100);

  while (!finished) {
    let status = await doFetch(`${OMNI_SERVER_URL}/api/v1/workflow/jobs`, token, 'GET')
    const job = status.jobs.find(job => job.id === jobId)

    if (!job || job.state !== 'running') {
      finished = true
      clearInterval(progressInterval);
      process.stdout.write('\rJob completed.                    \n');
    }
    else {
      await new Promise(resolve => setTimeout(resolve, interval));
    }
  }

  let result = await doFetch(`${OMNI_SERVER_URL}/api/v1/workflow/results?jobId=${jobId}`, token, 'GET')
  console.log(util.inspect(result, { showHidden: false, depth: null, colors: true }));
}

runRecipe()
