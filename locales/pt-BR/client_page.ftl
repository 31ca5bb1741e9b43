# A página do cliente final (/c/{token}), português do Brasil ("você").
# Os mesmos ids de locales/en/client_page.ftl (verificado por `cargo test --lib client_page`).

## Moldura

page-title = A mudança do seu número de WhatsApp
header-migrating = Transferindo { $number } para a 360dialog, por { $partner }
header-business = Empresa: { $business }
footer-private = Esta página é só sua: não compartilhe o link. Quem enviou foi { $partner }.
language-label = Idioma
live-updates = Esta página se atualiza sozinha.

## Avisos (a resposta ao que acabou de ser enviado)

notice-code-rejected = Esse código não foi aceito. { $count ->
    [0] Não restam tentativas.
    [one] Resta 1 tentativa.
   *[other] Restam { $count } tentativas.
} Confira o SMS ou a ligação mais recente e digite o código novamente.
notice-code-received = Obrigado, recebemos o seu código e estamos verificando.
notice-resend-sent = { $method ->
    [voice] Você vai receber em instantes uma ligação que lê um novo código.
   *[other] Um novo código está a caminho por SMS.
}
notice-resend-too-soon = Aguarde um pouco: você poderá pedir um novo código às { $time }.
notice-throttled = Muitas tentativas em pouco tempo. Aguarde { $wait } e tente novamente.
notice-not-now = Essa etapa já terminou. Veja abaixo o que fazer agora.
notice-form-expired = Esta página ficou aberta por muito tempo, então nada foi enviado. Tente novamente.
notice-invalid-code = O código tem 6 dígitos, só números. Confira e digite novamente.
wait-seconds = { $count ->
    [one] 1 segundo
   *[other] { $count } segundos
}
wait-minutes = { $count ->
    [one] 1 minuto
   *[other] { $count } minutos
}

## Preparação (na fila … pedindo o código)

preparing-title = Estamos verificando o seu número
preparing-lead = Isso leva alguns minutos e você não precisa deixar esta página aberta. Enquanto isso, confira se está tudo certo com os itens abaixo.
checklist-heading = Antes da mudança
check-done = Feito
check-todo = A fazer
check-unknown = Confira
check-two-step-title = A confirmação em duas etapas está desativada
check-two-step-how = A confirmação em duas etapas é o PIN de 6 dígitos que protege o seu número. Peça ao seu provedor atual de WhatsApp que a desative para este número, ou desative você mesmo no Gerenciador do WhatsApp → Números de telefone → Configurações → Confirmação em duas etapas, e confirme o e-mail que a Meta enviar. Você pode reativá-la depois da mudança.
check-display-name-title = O seu nome de exibição está aprovado
check-display-name-how = O nome que os clientes veem no WhatsApp precisa estar aprovado pela Meta, sem nenhuma troca de nome aguardando análise. O seu provedor atual consegue ver a situação; se houver uma troca pendente, aguarde a decisão da Meta.
check-business-app-title = O número não é usado no aplicativo WhatsApp Business
check-business-app-how = Esta mudança é para números que já funcionam com a Plataforma do WhatsApp Business (API) por meio de um provedor. Se você usa este número no aplicativo WhatsApp Business em um celular, avise { $partner }: o processo é outro.
check-business-verified-title = A sua empresa está verificada pela Meta
check-business-verified-how = Conclua a verificação da empresa nas Configurações do Negócio da Meta → Central de Segurança. Pode levar alguns dias.
check-phone-title = Você consegue receber SMS ou ligações neste número
check-phone-how = Deixe o celular deste número por perto: o WhatsApp envia para ele um código de 6 dígitos por SMS ou ligação, e você o digita nesta página.

## Digitar o código (awaiting_otp)

code-title = Digite o código que você recebeu
code-sent = { $method ->
    [voice] O WhatsApp está ligando para { $number } para ler um código de 6 dígitos.
   *[other] O WhatsApp enviou um código de 6 dígitos por SMS para { $number }.
}
code-sent-at = Enviado às { $time }.
code-label = Código de 6 dígitos
code-hint = Os 6 dígitos, como a mensagem mostra: 123456 ou 123-456.
code-submit = Confirmar o código
attempts-left = { $count ->
    [0] Não restam tentativas.
    [one] Resta 1 tentativa.
   *[other] Restam { $count } tentativas.
}
code-expires = Digite o código antes de { $time }.
resend-heading = Não recebeu o código?
resend-switch = { $method ->
    [voice] Prefiro receber uma ligação
   *[other] Prefiro receber um SMS
}
resend-again = { $method ->
    [voice] Ligar de novo
   *[other] Enviar o SMS de novo
}
available-now = Disponível agora
available-in = Disponível em { $countdown }
available-at = Disponível às { $time }

## Verificando o código (verifying_otp)

checking-title = Verificando o seu código…
checking-lead = Isso costuma levar poucos segundos.

## Um código novo a caminho (requesting_otp de novo: reenvio, ligação, nova tentativa)

sending-title = Enviando um código novo…
sending-lead = Normalmente leva alguns segundos. Depois digite aqui o código novo; um código anterior não vale mais.

## Embedded Signup (awaiting_signup)

signup-title = Conecte o seu número à 360dialog
signup-lead = Para transferir o seu número, conclua o cadastro da 360dialog com a sua conta do Facebook. Leva uns 10 minutos.
signup-button = Abrir o cadastro
signup-no-link = { $partner } vai enviar o link do cadastro para você. Guarde esta página: ela avança sozinha quando você terminar.
signup-steps-heading = O que escolher lá
signup-step-login = Entre com a conta do Facebook que administra a sua empresa (um administrador da conta empresarial da Meta).
signup-step-connected = Quando perguntarem sobre o seu número, escolha “Sim, este número está conectado à API do WhatsApp Business” (em inglês: “Yes, this number is connected to WhatsApp Business API”).
signup-step-new-waba = Crie uma nova conta do WhatsApp Business. Não escolha a conta que você já tem.
signup-step-number = Informe o seu número ({ $number }) e o código que chegar por SMS ou ligação. Uma mensagem dizendo que o número “está registrado em uma conta do WhatsApp Business existente ou em outro provedor” é esperada: continue.
signup-step-finish = Conclua o cadastro e volte para esta página.

## Finalizando e concluído

finishing-title = Quase lá
finishing-lead = Você não precisa fazer mais nada. Estamos finalizando a mudança.
progress-heading = Andamento
step-registration = Número registrado na Plataforma do WhatsApp Business
step-templates = Modelos de mensagem copiados
step-channel = Número conectado na 360dialog
step-done = Concluído
step-status-done = feito
step-status-current = em andamento
step-status-pending = ainda não começou
done-title = O seu número foi transferido
done-lead = { $number } agora funciona pela 360dialog, por { $partner }. O nome de exibição, a classificação de qualidade e os modelos de mensagem aprovados vieram junto. Você não precisa fazer mais nada e pode fechar esta página.
done-lead-partial = { $number } agora funciona pela 360dialog, por { $partner }. O nome de exibição e a classificação de qualidade vieram junto; alguns dos seus modelos de mensagem não puderam ser copiados, e { $partner } vai cuidar deles. Você não precisa fazer mais nada e pode fechar esta página.
waiting-on-you = Precisamos de uma coisa sua

## Falha

failed-title = A mudança parou
failed-you-heading = O que você precisa fazer
failed-next-heading = O que acontece agora
failed-partner-will = { $partner } já sabe do problema e vai entrar em contato com você, ou tentar de novo assim que isso estiver resolvido.
failed-nothing-for-you = Por enquanto você não precisa fazer nada.
failed-generic-client = Fale com { $partner }, que vai dizer o que é necessário.
fix-two-factor = Desative a confirmação em duas etapas deste número: peça ao seu provedor atual de WhatsApp ou faça você mesmo no Gerenciador do WhatsApp → Números de telefone → Configurações → Confirmação em duas etapas, e confirme o e-mail que a Meta enviar. Depois avise { $partner }.
fix-display-name = O seu nome de exibição ainda não foi aprovado, ou há uma troca de nome aguardando análise. Aguarde a aprovação da Meta (o seu provedor atual consegue ver a situação) e depois avise { $partner }.
fix-business-verified = Conclua a verificação da empresa nas Configurações do Negócio da Meta → Central de Segurança e depois avise { $partner }.
fix-business-app = Este número é usado no aplicativo WhatsApp Business, e esta mudança não consegue transferi-lo. { $partner } vai explicar as outras opções.
fix-otp-expired = Nenhum código foi digitado a tempo. { $partner } vai pedir um novo; quando ele chegar, digite-o nesta página na hora.
fix-otp-invalid = O código foi recusado vezes demais. { $partner } vai pedir um novo código; digite o mais recente que você receber.
fix-otp-rate-limited = O WhatsApp já enviou códigos demais para este número. Aguarde pelo menos uma hora; depois { $partner } vai pedir um novo código.
fix-register-limit = O número foi registrado vezes demais em pouco tempo e está bloqueado por 72 horas. Não o registre em nenhum outro lugar enquanto isso.
fix-pin = A confirmação em duas etapas ainda está ativada neste número. Desative-a (peça ao seu provedor atual ou use o Gerenciador do WhatsApp → Números de telefone → Configurações) e depois avise { $partner }.
fix-api-key-permission = Dê permissão a { $partner } para gerenciar o número: no Client Hub da 360dialog, abra o seu perfil → Partner e autorize.
fix-signup-not-completed = O cadastro da 360dialog não foi concluído a tempo. Peça um novo link de cadastro a { $partner } e conclua, escolhendo “Sim, este número está conectado à API do WhatsApp Business” e uma nova conta do WhatsApp Business.

## A página neutra para um link desconhecido, usado ou expirado

invalid-title = Este link não é mais válido
invalid-body = O link pode ter expirado ou sido substituído por um mais novo. Entre em contato com a empresa que enviou o link e peça um novo.
