# fleetgate's operations on a Windows host (PowerShell); $Op, $Workdir and $Rest are set first.
# Releases live in WORKDIR\releases\NAME; WORKDIR\current.txt names the one in service (a file
# replaced in one move, since symlinks need extra rights on Windows).
$ErrorActionPreference = 'Stop'
if ($Workdir -like '~/*') { $Workdir = Join-Path $env:USERPROFILE $Workdir.Substring(2) }
$releases = Join-Path $Workdir 'releases'
switch ($Op) {
    'state' {
        $currentFile = Join-Path $Workdir 'current.txt'
        $cur = ''
        if (Test-Path $currentFile) { $cur = (Get-Content $currentFile -Raw).Trim() }
        Write-Output "current $cur"
        if (Test-Path $releases) {
            foreach ($dir in Get-ChildItem $releases -Directory | Sort-Object Name) {
                $meta = Join-Path $dir.FullName 'release.json'
                if (-not (Test-Path $meta)) { continue }
                $status = 'ok'
                if (Test-Path (Join-Path $dir.FullName 'FAILED')) { $status = 'failed' }
                $json = (Get-Content $meta -Raw) -replace "`r?`n", ''
                Write-Output "release $($dir.Name) $status $json"
            }
        }
    }
    'pack' {
        # the release as base64 text of a tar archive (PowerShell pipes carry text, not bytes)
        $tmp = [IO.Path]::GetTempFileName()
        try {
            & tar.exe -C (Join-Path $releases $Rest[0]) -cf $tmp .
            if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
            [Console]::Out.Write([Convert]::ToBase64String([IO.File]::ReadAllBytes($tmp)))
        } finally { Remove-Item -Force $tmp }
    }
    'unpack' {
        # stdin: base64 text of a tar archive; unpacked under a temporary name, then renamed
        $incoming = Join-Path $releases ".incoming-$($Rest[0])"
        if (Test-Path $incoming) { Remove-Item -Recurse -Force $incoming }
        New-Item -ItemType Directory -Force $incoming | Out-Null
        $tmp = [IO.Path]::GetTempFileName()
        try {
            [IO.File]::WriteAllBytes($tmp, [Convert]::FromBase64String([Console]::In.ReadToEnd()))
            & tar.exe -C $incoming -xf $tmp
            if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
        } finally { Remove-Item -Force $tmp }
        Move-Item $incoming (Join-Path $releases $Rest[0])
    }
    'activate' {
        $tmp = Join-Path $Workdir '.current.tmp'
        Set-Content -Path $tmp -Value $Rest[0] -NoNewline
        Move-Item -Force $tmp (Join-Path $Workdir 'current.txt')
    }
    'mark-failed' {
        Set-Content -Path (Join-Path (Join-Path $releases $Rest[0]) 'FAILED') -Value $Rest[1]
    }
    'write-meta' {
        $dir = Join-Path $releases $Rest[0]
        $tmp = Join-Path $dir '.release.json.tmp'
        Set-Content -Path $tmp -Value $Rest[1]
        Move-Item -Force $tmp (Join-Path $dir 'release.json')
    }
    'unit' {
        $script = Join-Path (Join-Path $releases $Rest[0]) $Rest[1]
        $unitArgs = @($Rest | Select-Object -Skip 2)
        & powershell -NoProfile -ExecutionPolicy Bypass -File $script @unitArgs
        exit $LASTEXITCODE
    }
    default { Write-Error "unknown operation $Op"; exit 2 }
}
