# La página del cliente final (/c/{token}), español ("usted").
# Los mismos ids que locales/en/client_page.ftl (lo comprueba `cargo test --lib client_page`).

## Marco

page-title = El traslado de su número de WhatsApp
header-migrating = Trasladando { $number } a 360dialog para { $partner }
header-business = Empresa: { $business }
footer-private = Esta página es solo para usted: no comparta el enlace. Se lo envió { $partner }.
language-label = Idioma
live-updates = Esta página se actualiza sola.

## Avisos (la respuesta a lo que se acaba de enviar)

notice-code-rejected = Ese código no fue aceptado. { $count ->
    [0] No le quedan intentos.
    [one] Le queda 1 intento.
   *[other] Le quedan { $count } intentos.
} Revise el SMS o la llamada más reciente y escriba el código de nuevo.
notice-code-received = Gracias, recibimos su código y lo estamos comprobando.
notice-resend-sent = { $method ->
    [voice] En un momento recibirá una llamada que le dictará un código nuevo.
   *[other] Un código nuevo va en camino por SMS.
}
notice-resend-too-soon = Espere un poco: podrá pedir un código nuevo a las { $time }.
notice-throttled = Demasiados intentos en poco tiempo. Espere { $wait } y vuelva a intentarlo.
notice-not-now = Ese paso ya terminó. A continuación le indicamos qué hacer ahora.
notice-form-expired = Esta página estuvo abierta mucho tiempo, así que no se envió nada. Inténtelo de nuevo.
notice-invalid-code = El código tiene 6 dígitos, solo números. Revíselo y escríbalo de nuevo.
wait-seconds = { $count ->
    [one] 1 segundo
   *[other] { $count } segundos
}
wait-minutes = { $count ->
    [one] 1 minuto
   *[other] { $count } minutos
}

## Preparación (en cola … pidiendo el código)

preparing-title = Estamos revisando su número
preparing-lead = Esto tarda unos minutos y no necesita dejar esta página abierta. Mientras tanto, compruebe que todo lo siguiente está en orden.
checklist-heading = Antes del traslado
check-done = Hecho
check-todo = Pendiente
check-unknown = Compruébelo
check-two-step-title = La verificación en dos pasos está desactivada
check-two-step-how = La verificación en dos pasos es el PIN de 6 dígitos que protege su número. Pida a su proveedor actual de WhatsApp que la desactive para este número, o desactívela usted mismo en el Administrador de WhatsApp → Números de teléfono → Configuración → Verificación en dos pasos, y confirme el correo que le envíe Meta. Puede volver a activarla después del traslado.
check-display-name-title = Su nombre visible está aprobado
check-display-name-how = El nombre que sus clientes ven en WhatsApp debe estar aprobado por Meta, sin ningún cambio de nombre pendiente de revisión. Su proveedor actual puede ver el estado; si hay un cambio pendiente, espere la decisión de Meta.
check-business-app-title = El número no se usa en la aplicación WhatsApp Business
check-business-app-how = Este traslado es para números que ya funcionan con la Plataforma de WhatsApp Business (API) a través de un proveedor. Si usa este número en la aplicación WhatsApp Business de un teléfono, avise a { $partner }: hace falta otro proceso.
check-business-verified-title = Su empresa está verificada por Meta
check-business-verified-how = Complete la verificación del negocio en la Configuración del negocio de Meta → Centro de seguridad. Puede tardar unos días.
check-phone-title = Puede recibir SMS o llamadas en este número
check-phone-how = Tenga a mano el teléfono de este número: WhatsApp le envía un código de 6 dígitos por SMS o llamada, y usted lo escribe en esta página.

## Escribir el código (awaiting_otp)

code-title = Escriba el código que recibió
code-sent = { $method ->
    [voice] WhatsApp está llamando al { $number } para dictarle un código de 6 dígitos.
   *[other] WhatsApp envió un código de 6 dígitos por SMS al { $number }.
}
code-sent-at = Enviado a las { $time }.
code-label = Código de 6 dígitos
code-hint = Los 6 dígitos, como los muestra el mensaje: 123456 o 123-456.
code-submit = Confirmar el código
attempts-left = { $count ->
    [0] No le quedan intentos.
    [one] Le queda 1 intento.
   *[other] Le quedan { $count } intentos.
}
code-expires = Introduzca el código antes de las { $time }.
resend-heading = ¿No le llegó el código?
resend-switch = { $method ->
    [voice] Prefiero una llamada
   *[other] Prefiero un SMS
}
resend-again = { $method ->
    [voice] Llamarme de nuevo
   *[other] Enviar el SMS de nuevo
}
available-now = Disponible ahora
available-in = Disponible en { $countdown }
available-at = Disponible a las { $time }

## Comprobando el código (verifying_otp)

checking-title = Comprobando su código…
checking-lead = Normalmente tarda unos segundos.

## Un código nuevo en camino (requesting_otp otra vez: reenvío, llamada, reintento)

sending-title = Enviándole un código nuevo…
sending-lead = Normalmente tarda unos segundos. Luego escriba aquí el código nuevo; un código anterior ya no sirve.

## Embedded Signup (awaiting_signup)

signup-title = Conecte su número a 360dialog
signup-lead = Para trasladar su número, complete el registro de 360dialog con su cuenta de Facebook. Tarda unos 10 minutos.
signup-button = Abrir el registro
signup-no-link = { $partner } le enviará el enlace del registro. Conserve esta página: avanzará sola cuando usted termine.
signup-steps-heading = Qué elegir allí
signup-step-login = Inicie sesión con la cuenta de Facebook que administra su empresa (un administrador de la cuenta comercial de Meta).
signup-step-connected = Cuando le pregunten por su número, elija «Sí, este número está conectado a la API de WhatsApp Business» (en inglés: “Yes, this number is connected to WhatsApp Business API”).
signup-step-new-waba = Cree una cuenta de WhatsApp Business nueva. No elija la que ya tiene.
signup-step-number = Escriba su número ({ $number }) y el código que le llegue por SMS o llamada. Es normal ver un mensaje que dice que el número «está registrado en una cuenta de WhatsApp Business existente o en otro proveedor»: continúe.
signup-step-finish = Complete el registro y vuelva a esta página.

## Finalizando y terminado

finishing-title = Ya casi está
finishing-lead = No necesita hacer nada más. Estamos terminando el traslado.
progress-heading = Progreso
step-registration = Número registrado en la Plataforma de WhatsApp Business
step-templates = Plantillas de mensaje copiadas
step-channel = Número conectado en 360dialog
step-done = Terminado
step-status-done = hecho
step-status-current = en curso
step-status-pending = aún no empezó
done-title = Su número ya se trasladó
done-lead = { $number } ya funciona a través de 360dialog para { $partner }. Su nombre visible, su calificación de calidad y sus plantillas aprobadas se conservaron. No necesita hacer nada más y puede cerrar esta página.
done-lead-partial = { $number } ya funciona a través de 360dialog para { $partner }. Su nombre visible y su calificación de calidad se conservaron; algunas de sus plantillas no se pudieron copiar, y { $partner } se ocupará de ellas. No necesita hacer nada más y puede cerrar esta página.
waiting-on-you = Necesitamos algo de usted

## Error

failed-title = El traslado se detuvo
failed-you-heading = Qué necesita hacer
failed-next-heading = Qué pasa ahora
failed-partner-will = { $partner } ya está al tanto y se pondrá en contacto con usted, o lo volverá a intentar cuando esto se resuelva.
failed-nothing-for-you = Por ahora no necesita hacer nada.
failed-generic-client = Comuníquese con { $partner }, que le dirá qué hace falta.
fix-two-factor = Desactive la verificación en dos pasos de este número: pídalo a su proveedor actual de WhatsApp o hágalo usted mismo en el Administrador de WhatsApp → Números de teléfono → Configuración → Verificación en dos pasos, y confirme el correo que le envíe Meta. Después avise a { $partner }.
fix-display-name = Su nombre visible todavía no está aprobado, o hay un cambio de nombre pendiente de revisión. Espere a que Meta lo apruebe (su proveedor actual puede ver el estado) y después avise a { $partner }.
fix-business-verified = Complete la verificación del negocio en la Configuración del negocio de Meta → Centro de seguridad y después avise a { $partner }.
fix-business-app = Este número se usa en la aplicación WhatsApp Business, y este traslado no puede llevarlo. { $partner } le explicará las otras opciones.
fix-otp-expired = No se escribió ningún código a tiempo. { $partner } pedirá uno nuevo; cuando llegue, escríbalo en esta página enseguida.
fix-otp-invalid = El código fue rechazado demasiadas veces. { $partner } pedirá un código nuevo; escriba el más reciente que reciba.
fix-otp-rate-limited = WhatsApp ya envió demasiados códigos a este número. Espere al menos una hora; después { $partner } pedirá un código nuevo.
fix-register-limit = El número se registró demasiadas veces en poco tiempo y está bloqueado durante 72 horas. Mientras tanto, no lo registre en ningún otro lugar.
fix-pin = La verificación en dos pasos sigue activada en este número. Desactívela (pídalo a su proveedor actual o use el Administrador de WhatsApp → Números de teléfono → Configuración) y después avise a { $partner }.
fix-api-key-permission = Dé permiso a { $partner } para administrar el número: en el Client Hub de 360dialog, abra su perfil → Partner y autorícelo.
fix-signup-not-completed = El registro de 360dialog no se completó a tiempo. Pida a { $partner } un nuevo enlace de registro y complételo, eligiendo «Sí, este número está conectado a la API de WhatsApp Business» y una cuenta de WhatsApp Business nueva.

## La página neutra para un enlace desconocido, usado o vencido

invalid-title = Este enlace ya no es válido
invalid-body = Puede que el enlace haya vencido o que se haya reemplazado por uno más reciente. Comuníquese con la empresa que se lo envió y pídale un enlace nuevo.
