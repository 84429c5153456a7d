@echo off
rem Start the CatVTON try-on service on http://0.0.0.0:8000 (Windows).
rem Creates .venv if there is none, installs requirements.txt, then runs "python -m app" with
rem your arguments appended (a later flag wins over the defaults here):
rem   start_server.bat
rem   start_server.bat --demo
rem   start_server.bat --weights-dir weights --port 9000
rem For a CUDA GPU, install the CUDA build of torch into .venv first (see README, Windows).
setlocal
cd /d "%~dp0"
if not exist ".venv\Scripts\python.exe" (
    echo Creating the virtual environment in .venv
    py -3 -m venv .venv 2>nul || python -m venv .venv
    if errorlevel 1 goto :failed
)
".venv\Scripts\python.exe" -m pip install --disable-pip-version-check -q -r requirements.txt
if errorlevel 1 goto :failed
rem Ctrl+C reaches python itself (same console): it drains, up to --drain-timeout seconds, and
rem exits 0; a second Ctrl+C exits at once. cmd may then ask "Terminate batch job (Y/N)?":
rem the server has already stopped by then. The exit status is passed on.
".venv\Scripts\python.exe" -m app --host 0.0.0.0 --port 8000 %*
exit /b %errorlevel%
:failed
echo Setup failed: see the messages above. 1>&2
exit /b 1
