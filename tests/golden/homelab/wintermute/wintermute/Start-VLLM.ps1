# Rendered by fleetgate from fleet.yaml (deployment wintermute); settings sha256:e9607e1e513ea643.
# Do not edit: change the fleet file and render again.
# Runs vLLM deployment wintermute in Docker Desktop (vllm/vllm-openai:v0.32.0) on an NVIDIA GPU (Windows).
# Usage: powershell -NoProfile -ExecutionPolicy Bypass -File Start-VLLM.ps1 [start|stop|restart|status|logs] [-Lines N]
# HF_TOKEN and other secrets come from the environment or from C:/fleetgate\env (KEY=value lines).
param(
    [ValidateSet('start', 'stop', 'restart', 'status', 'logs')]
    [string]$Action = 'start',
    [int]$Lines = 100
)

$Name = 'wintermute'
$Container = 'fleetgate-wintermute'
$Image = 'vllm/vllm-openai:v0.32.0'
$StateDir = 'C:/fleetgate'
$HfCache = (Join-Path $env:USERPROFILE '.cache\huggingface')
$VllmArgs = @(
    'hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4',
    '--served-model-name', 'llama31-8b-wintermute',
    '--port', '8000',
    '--max-model-len', '16384',
    '--max-num-seqs', '2',
    '--gpu-memory-utilization', '0.92',
    '--kv-cache-dtype', 'fp8'
)

function Import-EnvFile {
    $file = Join-Path $StateDir 'env'
    if (Test-Path $file) {
        foreach ($line in Get-Content $file) {
            if ($line -match '^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$') {
                Set-Item -Path "env:$($Matches[1])" -Value $Matches[2]
            }
        }
    }
}

function Get-DockerArgs {
    $dockerArgs = @(
        '--gpus', 'all',
        '--ipc=host',
        '-p', '8000:8000',
        '-v', ($HfCache + ':/root/.cache/huggingface'),
        '-e', 'HF_TOKEN'
    )
    return $dockerArgs
}

function Start-Vllm {
    Import-EnvFile
    docker rm -f $Container 2>&1 | Out-Null
    $dockerArgs = Get-DockerArgs
    docker run -d --name $Container --restart unless-stopped @dockerArgs $Image @VllmArgs
    if ($LASTEXITCODE -ne 0) { throw "docker run failed with exit code $LASTEXITCODE" }
    Write-Output "$Name started in container $Container"
}

function Stop-Vllm {
    docker stop -t 30 $Container 2>&1 | Out-Null
    docker rm -f $Container 2>&1 | Out-Null
    Write-Output "$Name stopped"
}

function Get-VllmStatus {
    $state = docker inspect -f '{{.State.Status}}' $Container 2>$null
    if (-not $state) { $state = 'absent' }
    Write-Output "${Name}: container $Container is $state"
    if ($state -ne 'running') { exit 3 }
}

switch ($Action) {
    'start' { Start-Vllm }
    'stop' { Stop-Vllm }
    'restart' { Stop-Vllm; Start-Vllm }
    'status' { Get-VllmStatus }
    'logs' { docker logs --tail $Lines $Container 2>&1 }
}
